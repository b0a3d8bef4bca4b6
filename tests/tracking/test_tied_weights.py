"""A tensor reached under several names or views is counted once, online and offline.

Bug: the monitor put every (name, tensor) it was given into the window, and ``analyze_checkpoints`` every
tensor of a checkpoint. A tied embedding (``lm_head.weight`` is ``embed.weight``) is saved by
``torch.save(model.state_dict())`` under both names, pointing at one storage, so offline the embedding's
update filled two blocks of each row of X: σ came out up to 34% off the online monitor (σ × √2 where the
embedding dominates). Online, ``named_parameters()`` drops a repeated Parameter object, but not a second
Parameter on the same memory, and a list ``[W, W]`` or ``[W, W.view(-1)]`` was taken as it came. Fix:
tensors whose memory overlaps are merged (``tracking/_sharing.py``) and the merge is saved in the
monitor's config. The reference is a dense float64 SVD of the updates with each tensor counted once.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from spectral_edge.errors import SpectrumWarning
from spectral_edge.store import RunStore
from spectral_edge.tracking import SpectralMonitor, analyze_checkpoints
from spectral_edge.tracking.monitor import LAYOUT_CHECK_EVERY

safetensors_torch = pytest.importorskip("safetensors.torch")

VOCAB, DIM = 11, 6
WINDOW, STEPS = 4, 8
TIED = {"lm_head.weight": "embed.weight"}


class TiedLM(nn.Module):
    """A language model whose output embedding is its input embedding (GPT-2's tie_word_embeddings)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, DIM)
        self.mix = nn.Linear(DIM, DIM)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)
        self.lm_head.weight = self.embed.weight
        self.double()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(torch.tanh(self.mix(self.embed(idx))))


def train(model: nn.Module, n_steps: int, after_step) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    for step in range(1, n_steps + 1):
        idx, target = torch.randint(0, VOCAB, (16,), generator=g), torch.randint(0, VOCAB, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(idx), target).backward()
        opt.step()
        after_step(step)


def flat(tensors) -> np.ndarray:
    return torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors]).numpy().copy()


def sigma(thetas: list[np.ndarray], end: int, window: int = WINDOW) -> np.ndarray:
    """σ of the window of updates ending at snapshot ``end``: a dense float64 SVD."""
    deltas = np.diff(np.asarray(thetas), axis=0)[end - window : end]  # (W, P)
    return np.linalg.svd(deltas, compute_uv=False)


def trained_with_online_monitor(tmp_path, save=None):
    """Train TiedLM under a float64 monitor; return its records, the monitor, and the snapshots counted
    once (embed, mix) and twice (lm_head too)."""
    model = TiedLM()
    mon = SpectralMonitor(model, window=WINDOW, storage_dtype=torch.float64, store=tmp_path / "online")
    once, twice, records = [flat(model.parameters())], [flat([*model.parameters(), model.lm_head.weight])], {}
    if save is not None:
        save(model, 0)

    def after_step(step):
        record = mon.step()
        if record is not None:
            records[step] = record
        once.append(flat(model.parameters()))  # parameters() yields the tied tensor once
        twice.append(flat([*model.parameters(), model.lm_head.weight]))
        if save is not None:
            save(model, step)

    train(model, STEPS, after_step)
    mon.close()
    return records, mon, once, twice


# -- online --------------------------------------------------------------------------------------------


def test_online_tied_embedding_is_counted_once_and_the_merge_is_in_the_config(tmp_path):
    records, mon, once, twice = trained_with_online_monitor(tmp_path)
    assert mon.merged == TIED and mon.n_params == once[0].size
    assert sorted(records) == list(range(WINDOW, STEPS + 1))
    for step, record in records.items():
        np.testing.assert_allclose(record.singular_values, sigma(once, step), rtol=1e-9)
        assert not np.allclose(record.singular_values, sigma(twice, step), rtol=1e-3)  # the test can tell
    with RunStore(tmp_path / "online", mode="r") as store:
        assert store.config()["monitor"]["merged"] == TIED
        assert store.config()["monitor"]["partially_merged"] == {}


def test_online_tied_model_keeps_its_window_past_the_layout_check(tmp_path):
    """The periodic layout check lists the parameters with their tied names again: it must merge them the
    same way, or every check would see a "changed" parameter set and restart the window."""
    model = TiedLM()
    mon = SpectralMonitor(model, window=2)
    train(model, LAYOUT_CHECK_EVERY + 5, lambda step: mon.step())
    assert not [e for e in mon.events if e.kind == "parameters_changed"]
    assert len(mon.records) == LAYOUT_CHECK_EVERY + 5 - 1  # one per step from step W = 2 on
    mon.close()


class TwoParametersOneMemory(nn.Module):
    """A module that registers a second Parameter object on W's memory: named_parameters() lists both."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
        self.flat = nn.Parameter(self.w.data.view(-1))


@pytest.mark.parametrize("given", ["W, W", "W, W.view(-1)", "module"])
def test_online_one_memory_given_twice_is_counted_once(given):
    w = torch.randn(5, 3, dtype=torch.float64)
    if given == "W, W":
        source, merged = [w, w], {"param_1": "param_0"}
    elif given == "W, W.view(-1)":
        source, merged = [w, w.view(-1)], {"param_1": "param_0"}
    else:
        module = TwoParametersOneMemory()
        source, merged, w = module, {"flat": "w"}, module.w.data
    mon = SpectralMonitor(source, window=3, storage_dtype=torch.float64)
    assert mon.merged == merged and mon.n_params == 15 and mon.config()["merged"] == merged
    g = torch.Generator().manual_seed(0)
    thetas, records = [flat([w])], {}
    for step in range(1, 6):
        w.add_(torch.randn(5, 3, generator=g, dtype=torch.float64))
        records[step] = mon.step()
        thetas.append(flat([w]))
    for step in (3, 4, 5):
        np.testing.assert_allclose(records[step].singular_values, sigma(thetas, step, 3), rtol=1e-9)
    mon.close()


def test_online_partial_overlap_keeps_the_larger_and_warns():
    """Two overlapping slices of one buffer cannot both be counted without counting the overlap twice: the
    larger is kept, the other left out with a warning naming the elements that go unmonitored."""
    buf = torch.zeros(10, dtype=torch.float64)
    with pytest.warns(SpectrumWarning, match=r"'b' \(4 elements outside 'a'\)"):
        mon = SpectralMonitor([("a", buf[:6]), ("b", buf[4:])], window=2)
    assert mon.n_params == 6 and mon.merged == {"b": "a"} and mon.partially_merged == {"b": 4}
    assert mon.config()["partially_merged"] == {"b": 4}
    mon.close()


# -- offline -------------------------------------------------------------------------------------------


def _save(layout: str, folder):
    """A checkpoint writer for trained_with_online_monitor, and the paths it wrote."""
    paths = []

    def save(model: nn.Module, step: int) -> None:
        state = model.state_dict()  # both names of the tied embedding, on one storage
        if layout == "torch.save":
            path = folder / f"step_{step}.pt"
            torch.save(state, path)
        else:  # HF Trainer's checkpoint-N/ with the model's config.json
            path = folder / f"checkpoint-{step}"
            path.mkdir()
            config = {"model_type": "tiny", "vocab_size": VOCAB}
            if layout == "hf-untied":
                config["tie_word_embeddings"] = False
            (path / "config.json").write_text(json.dumps(config))
            if layout == "hf-safetensors":  # the tied copy is left out of the file, as save_pretrained does
                safetensors_torch.save_model(model, str(path / "model.safetensors"))
            else:  # "hf-copies", "hf-untied": both names kept as two equal tensors
                safetensors_torch.save_file(
                    {k: v.clone() for k, v in state.items()}, str(path / "model.safetensors")
                )
        paths.append(path)

    return save, paths


@pytest.mark.parametrize("layout", ["torch.save", "hf-safetensors", "hf-copies"])
def test_offline_tied_embedding_is_counted_once_as_online(tmp_path, layout):
    """torch.save keeps both names on one storage; HF's safetensors leaves the tied name out (read as the
    embedding when names= asks for it); equal copies in an HF folder are tied by its config.json."""
    (tmp_path / "ckpts").mkdir()
    save, paths = _save(layout, tmp_path / "ckpts")
    online, _, once, _ = trained_with_online_monitor(tmp_path, save)
    # The online monitor's parameter names; the safetensors file holds no "lm_head.weight" at all.
    names = [n for n, _ in TiedLM().named_parameters(remove_duplicate=False)]
    records = analyze_checkpoints(
        paths, window=WINDOW, storage_dtype=torch.float64, store=tmp_path / "offline", names=names
    )
    assert [r.step for r in records] == sorted(online)
    for record in records:
        np.testing.assert_allclose(record.singular_values, sigma(once, record.step), rtol=1e-9)
        np.testing.assert_allclose(record.singular_values, online[record.step].singular_values, rtol=1e-12)
    with RunStore(tmp_path / "offline", mode="r") as store:
        assert store.config()["monitor"]["merged"] == TIED
        assert store.config()["monitor"]["n_params"] == once[0].size


def test_offline_equal_copies_outside_an_hf_folder_are_two_tensors_unless_names_leaves_one_out(tmp_path):
    """Values alone never tie tensors (LayerNorm weights are all ones at initialisation): copies saved
    without an HF config are counted twice, and ``names=`` is how to leave the copy out."""
    paths = []

    def save(model, step):
        paths.append(tmp_path / f"step_{step}.pt")
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, paths[-1])

    _, _, once, twice = trained_with_online_monitor(tmp_path, save)
    as_saved = analyze_checkpoints(paths, window=WINDOW, storage_dtype=torch.float64)
    np.testing.assert_allclose(as_saved[0].singular_values, sigma(twice, WINDOW), rtol=1e-9)
    names = ["embed.weight", "mix.weight", "mix.bias"]
    records = analyze_checkpoints(paths, window=WINDOW, storage_dtype=torch.float64, names=names)
    for record in records:
        np.testing.assert_allclose(record.singular_values, sigma(once, record.step), rtol=1e-9)


def test_offline_hf_config_that_unties_the_embeddings_keeps_equal_copies_apart(tmp_path):
    (tmp_path / "ckpts").mkdir()
    save, paths = _save("hf-untied", tmp_path / "ckpts")
    _, _, _, twice = trained_with_online_monitor(tmp_path, save)
    records = analyze_checkpoints(paths, window=WINDOW, storage_dtype=torch.float64)
    np.testing.assert_allclose(records[0].singular_values, sigma(twice, WINDOW), rtol=1e-9)


def test_offline_checkpoints_tied_differently_are_refused(tmp_path):
    paths = []

    def save(model, step):
        state = model.state_dict()
        if step == 2:  # this one breaks the tie
            state = {k: v.clone() for k, v in state.items()}
        paths.append(tmp_path / f"step_{step}.pt")
        torch.save(state, paths[-1])

    trained_with_online_monitor(tmp_path, save)
    with pytest.raises(ValueError, match=r"step_2.pt ties tensors differently from .*step_0.pt"):
        analyze_checkpoints(paths, window=WINDOW)
