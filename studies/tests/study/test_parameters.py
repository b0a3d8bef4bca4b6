"""The study's two readings of X (``parameters="all"`` and ``"attention"``) and Table 7's weighted k*.

A tiny transformer trained for a few steps through the :class:`StudyRecorder`, with every update kept,
so each reading is checked against a dense float64 SVD of the window built by hand: all parameters, or
only W_Q, W_K, W_V, W_O (the author's grokking scripts). Then the suite summary reports both readings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from spectral_edge import RunStore
from spectral_edge_studies.models.transformer import Transformer
from spectral_edge_studies.study.alarms import load_series
from spectral_edge_studies.study.common import (
    ATTENTION_GROUP,
    OTHER_GROUP,
    PARAMETERS,
    WINDOW,
    StudyRecorder,
    parameter_group,
)
from spectral_edge_studies.study.summary import analyze_run, build_summary, format_markdown
from study.test_summary import _record, _sigma, _write_run


@dataclass(frozen=True)
class TinyConfig:
    task: str = "add"
    seed: int = 42
    weight_decay: float = 1.0
    max_steps: int = 16
    eval_every: int = 8
    monitor_interval: int = 1


def _weighted_k_star(sigma: np.ndarray) -> int:
    """argmax_j (σ_j/Σσ)(σ_j/σ_j+1), the replication's k* (formulas.md §5), written out for full rank."""
    return int(np.argmax(sigma[:-1] / sigma.sum() * sigma[:-1] / sigma[1:])) + 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A "modular" run of a 2-layer transformer, its recorded updates (all, attention) and its directory."""
    out = tmp_path_factory.mktemp("suite")
    run_dir = out / "modular" / "add-seed42-wd1"
    torch.manual_seed(0)
    model = Transformer(vocab_size=8, n_classes=7, seq_len=3, d_model=8, n_layers=2, n_heads=2, d_mlp=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1.0)
    config = TinyConfig()

    def flat(keep) -> np.ndarray:
        return np.concatenate(
            [p.detach().double().reshape(-1).numpy() for n, p in model.named_parameters() if keep(n)]
        )

    snapshots = {
        "all": [flat(lambda n: True)],
        "attention": [flat(lambda n: parameter_group(n) == "attention")],
    }
    metrics = {"train_loss": 1.0, "test_loss": 1.0, "train_acc": 1.0, "test_acc": 0.5}
    queries = [block.attn.q_proj.weight for block in model.blocks]
    with StudyRecorder(model, optimizer, run_dir, family="modular", config=config, n_checkpoints=0) as rec:
        rec.evaluate(0, metrics, attention_query_weights=queries)
        for step in range(1, config.max_steps + 1):
            # a fresh batch each step, so that the window's updates span W directions well above round-off
            x, y = torch.randint(0, 8, (32, 3)), torch.randint(0, 7, (32,))
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rec.after_step(step, loss.item())
            snapshots["all"].append(flat(lambda n: True))
            snapshots["attention"].append(flat(lambda n: parameter_group(n) == "attention"))
            if step % config.eval_every == 0:
                rec.evaluate(step, metrics, attention_query_weights=queries)
        rec.finish(steps=config.max_steps)
    updates = {name: np.diff(np.stack(s), axis=0) for name, s in snapshots.items()}  # (steps, P) each
    return out, run_dir, updates, model


def test_attention_weights_are_their_own_group() -> None:
    names = {
        "blocks.0.attn.q_proj.weight": ATTENTION_GROUP,
        "blocks.1.attn.o_proj.weight": ATTENTION_GROUP,
        "decoder.0.cross_attn.k_proj.weight": ATTENTION_GROUP,  # the SCAN model's cross-attention
        "trunk.blocks.0.attn.v_proj.weight": ATTENTION_GROUP,  # the multi-task trunk
        "blocks.0.attn.q_proj.bias": OTHER_GROUP,  # weights only, as the author's scripts
        "blocks.0.mlp.up.weight": OTHER_GROUP,
        "embed.weight": OTHER_GROUP,
        "q_proj.weight": ATTENTION_GROUP,
    }
    assert {name: parameter_group(name) for name in names} == names
    assert PARAMETERS == ("all", "attention")


def test_the_recorder_stores_both_grams_in_one_pass(tiny_run) -> None:
    _, run_dir, updates, model = tiny_run
    with RunStore(run_dir, mode="r") as store:
        config, records = store.config(), store.records()
    attention_size = sum(p.numel() for n, p in model.named_parameters() if n.endswith("_proj.weight"))
    assert config["monitor"]["groups"] == {
        OTHER_GROUP: sum(p.numel() for p in model.parameters()) - attention_size,
        ATTENTION_GROUP: attention_size,
    }
    assert updates["attention"].shape[1] == attention_size
    assert len(records) == TinyConfig.max_steps - WINDOW + 1
    for record in records:
        end = record["step"]  # the window holds updates end − W + 1 … end
        for name, sigma in (
            ("all", record["singular_values"]),
            ("attention", record["groups"][ATTENTION_GROUP]["singular_values"]),
        ):
            reference = np.linalg.svd(updates[name][end - WINDOW : end], compute_uv=False)
            np.testing.assert_allclose(sigma, reference, rtol=1e-4, atol=1e-6 * reference[0])


@pytest.mark.parametrize("parameters", PARAMETERS)
def test_each_reading_matches_a_dense_svd_of_its_own_x(tiny_run, parameters) -> None:
    _, run_dir, updates, _ = tiny_run
    series = load_series(run_dir, parameters=parameters)
    assert series.parameters == parameters
    assert series.record_steps.tolist() == list(range(WINDOW, TinyConfig.max_steps + 1))
    for i, end in enumerate(series.record_steps):
        sigma = np.linalg.svd(updates[parameters][end - WINDOW : end], compute_uv=False)
        lam = sigma**2
        assert series.g23[i] == pytest.approx(lam[1] - lam[2], rel=1e-3)
        assert series.ratio12[i] == pytest.approx(sigma[0] / sigma[1], rel=1e-4)
        assert series.k_star[i] == int(np.argmax(sigma[:-1] / sigma[1:])) + 1
        assert series.k_star_weighted[i] == _weighted_k_star(sigma)


def test_the_readings_differ_and_evaluations_do_not(tiny_run) -> None:
    _, run_dir, _, _ = tiny_run
    full, attention = (load_series(run_dir, parameters=p) for p in PARAMETERS)
    assert not np.allclose(full.g23, attention.g23)
    assert full.evals.keys() == attention.evals.keys() and full.events == attention.events


def test_the_summary_reports_both_readings(tiny_run) -> None:
    out, run_dir, updates, _ = tiny_run
    summary = build_summary(out, weightwatcher=False)
    last = TinyConfig.max_steps
    sigma_all = np.linalg.svd(updates["all"][last - WINDOW : last], compute_uv=False)
    sigma_attention = np.linalg.svd(updates["attention"][last - WINDOW : last], compute_uv=False)

    (row,) = summary["table7"]
    assert row["k_star_term"] == _weighted_k_star(sigma_all)
    assert row["k_star_term_unweighted"] == int(np.argmax(sigma_all[:-1] / sigma_all[1:])) + 1
    attention = summary["attention"]
    assert (attention["runs"], attention["unavailable"]) == (1, 0)
    (attention_row,) = attention["table7"]
    assert attention_row["k_star_term"] == _weighted_k_star(sigma_attention)
    assert (
        attention_row["k_star_term_unweighted"]
        == int(np.argmax(sigma_attention[:-1] / sigma_attention[1:])) + 1
    )
    lam = [
        np.linalg.svd(updates["attention"][e - WINDOW : e], compute_uv=False) ** 2
        for e in range(WINDOW, last + 1)
    ]
    # the run does not grok (test accuracy 0.5): g23_early is the peak over the whole run
    assert attention_row["g23_early"] == pytest.approx(max(v[1] - v[2] for v in lam), rel=1e-3)
    assert set(attention["alarms"]) == {"spectral_g23", "spectral_k1"}
    run = summary["runs"][0]
    assert run["attention"]["parameters"] == "attention" and set(run["attention"]["alarms"]) == {
        "spectral_g23",
        "spectral_k1",
    }
    assert set(summary["parameters"]) == set(PARAMETERS)

    md = format_markdown(summary)
    assert "## Spectral numbers from the attention weights" in md
    assert "### Table 7 layout, attention weights only" in md
    assert "| `spectral_g23` | attention |" in md and "| `spectral_k1` | all |" in md
    assert "k*_term, weighted [paper] | k*_term, unweighted | W_Q k* |" in md


def test_table7_takes_the_weighted_k_star(tmp_path) -> None:
    """The last record's weighted k* (1) and unweighted k* (9) differ: Table 7's k*_term is the weighted
    one, as in the author's replication, and the unweighted one is kept beside it."""
    run_dir = _write_run(tmp_path, "modular", "add", 42, 1.0, grok=600)
    with RunStore(run_dir, mode="a") as store:
        store.add_record(dataclasses.replace(_record(1010, _sigma(0.3)), k_star=9, k_star_weighted=1))
    row = analyze_run(run_dir, weightwatcher=False)["table7"]
    assert (row["k_star_term"], row["k_star_term_unweighted"], row["paper_k_star_term"]) == (1, 9, 3)


def test_a_run_recorded_without_the_attention_group(tmp_path) -> None:
    """Runs recorded before the study monitored the attention weights: the default reading as before, the
    attention reading marked unavailable with the reason, and the summary says so."""
    run_dir = _write_run(tmp_path, "modular", "add", 42, 1.0, grok=600)
    with pytest.raises(ValueError, match="hold no 'attention' group.*parameters='all'"):
        load_series(run_dir, parameters="attention")
    run = analyze_run(run_dir, weightwatcher=False)
    assert run["attention"]["available"] is False and "no 'attention' group" in run["attention"]["note"]
    summary = build_summary(tmp_path, weightwatcher=False)
    assert summary["attention"]["runs"] == 0 and summary["attention"]["unavailable"] == 1
    assert "Not available for this suite: the records of" in format_markdown(summary)


def test_an_unknown_reading_is_refused(tiny_run) -> None:
    _, run_dir, _, _ = tiny_run
    with pytest.raises(ValueError, match=r"parameters must be one of \('all', 'attention'\), got 'mlp'"):
        load_series(run_dir, parameters="mlp")
