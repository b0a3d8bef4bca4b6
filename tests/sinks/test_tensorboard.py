"""TensorBoardSink: the event files, read back with TensorBoard's EventAccumulator, hold the monitor's output."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from spectral_edge.errors import MissingExtraError
from spectral_edge.sinks import TensorBoardSink

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

ALL = {"scalars": 0, "histograms": 0, "tensors": 0}  # size guidance 0: keep every point, no sampling


def read(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance=ALL)
    acc.Reload()
    return acc


def test_event_files_hold_every_scalar_the_sigma_histogram_events_and_evals(tmp_path, train):
    run = train([TensorBoardSink(tmp_path / "tb")])
    acc = read(tmp_path / "tb")
    steps = [r.step for r in run.records]

    scalars = [r.log_scalars(metric_prefix="") for r in run.records]
    expected = {tag: [s[tag] for s in scalars] for tag in scalars[0]}
    assert {"spectral/k_star", "spectral/gap_ratio", "spectral/adiabatic", "spectral/sigma/4"} <= set(
        expected
    )
    assert "loss" in expected and "spectral/loss" not in expected  # the user's metric under its own name
    eval_tags = {f"spectral/eval/{name}" for name in run.evals[0][1]}
    assert set(acc.Tags()["scalars"]) == set(expected) | eval_tags
    for tag, values in expected.items():
        points = acc.Scalars(tag)
        assert [p.step for p in points] == steps, tag
        # TensorBoard keeps scalars as float32; inf (the bias group's R) stays inf
        np.testing.assert_array_equal([p.value for p in points], np.float32(values), err_msg=tag)
    assert np.isinf(acc.Scalars("spectral/group/bias/gap_ratio")[0].value)

    for name in run.evals[0][1]:
        points = acc.Scalars(f"spectral/eval/{name}")
        assert [(p.step, p.value) for p in points] == [(s, np.float32(m[name])) for s, m in run.evals]

    histograms = acc.Histograms("spectral/sigma")
    assert [h.step for h in histograms] == steps
    for h, r in zip(histograms, run.records, strict=True):
        sigma = r.singular_values
        v = h.histogram_value
        assert (v.num, v.min, v.max) == (len(sigma), sigma.min(), sigma.max())
        assert v.sum == pytest.approx(sigma.sum(), rel=1e-12)

    texts = acc.Tensors("spectral/events/text_summary")
    assert [t.step for t in texts] == [e.step for e in run.events]
    for t, e in zip(texts, run.events, strict=True):
        text = t.tensor_proto.string_val[0].decode()
        assert text == f"**{e.kind}** at step {e.step}: " + e.message.replace("*", r"\*")


def test_the_regime_is_text_where_it_changes_and_the_config_is_hparams(tmp_path, train):
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = train([TensorBoardSink(tmp_path / "tb")])
    acc = read(tmp_path / "tb")

    changes, last = [], None
    for r in run.records:
        if r.regime is not None and r.regime != last:
            changes.append((r.step, r.regime))
            last = r.regime
    assert changes  # the run has regimes to show
    texts = acc.Tensors("spectral/regime_label/text_summary")
    assert [(t.step, t.tensor_proto.string_val[0].decode()) for t in texts] == changes
    # the numeric form stays a scalar, the index in REGIMES
    from spectral_edge.tracking.record import REGIMES

    assert [p.value for p in acc.Scalars("spectral/regime")] == [
        float(REGIMES.index(r.regime)) for r in run.records if r.regime is not None
    ]

    # the HParams tab reads the session start info from the run's own event file (no sub-run)
    assert [p.name for p in (tmp_path / "tb").iterdir() if p.is_dir()] == []
    content = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(content)
    data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = {}
    for key, value in data.session_start_info.hparams.items():
        hparams[key] = getattr(value, value.WhichOneof("kind"))
    assert hparams["spectral.monitor.window"] == 4
    assert hparams["spectral.monitor.interval"] == 1
    assert hparams["spectral.monitor.events.persistence"] == 1
    assert hparams["spectral.monitor.lr"] == "SGD"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"spectral/k_star", "spectral/gap_ratio"}


def test_an_existing_writer_is_flushed_not_closed(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    sink = TensorBoardSink(writer=writer, prefix="se/", histogram=False)
    sink.write_eval(5, {"acc": 0.25})
    sink.close()
    sink.close()
    assert [(p.step, p.value) for p in read(tmp_path / "tb").Scalars("se/eval/acc")] == [(5, 0.25)]
    writer.add_scalar("mine", 1.0, 6)  # the owner's writer still works
    writer.close()
    assert read(tmp_path / "tb").Tags()["histograms"] == []


def test_exactly_one_of_log_dir_and_writer(tmp_path):
    with pytest.raises(ValueError, match="exactly one of log_dir"):
        TensorBoardSink()
    with pytest.raises(ValueError, match="exactly one of log_dir"):
        TensorBoardSink(tmp_path, writer=object())


def test_missing_tensorboard_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'spectral-edge\[tensorboard\]'"):
        TensorBoardSink(tmp_path)


def test_a_writer_without_a_file_writer_gets_the_config_as_text():
    class Recorder:
        def __init__(self):
            self.texts = []

        def add_text(self, tag, text, global_step=None):
            self.texts.append((tag, text))

        def flush(self):
            pass

    writer = Recorder()
    TensorBoardSink(writer=writer).write_config({"monitor": {"window": 4}})
    assert writer.texts == [("spectral/config", "    spectral.monitor.window = 4")]
