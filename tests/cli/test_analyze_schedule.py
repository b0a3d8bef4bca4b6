"""``spectral-edge analyze`` reads η from an HF Trainer's ``trainer_state.json`` when ``--lr`` is not given.

The Trainer logs, at step s, the learning rate step s used; the newest ``checkpoint-N/trainer_state.json``
holds every entry logged up to N. Each record's 𝒜 must use the rate of its own step (the newest update of
its window), as the online monitor does, and the output must say where η came from.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spectral_edge import analyze_checkpoints
from spectral_edge.cli.main import main
from tests.cli.runs import write_checkpoints

STEPS = list(range(0, 13))
WINDOW = 4


def write_schedule(folder: Path, rates: dict[int, float]) -> None:
    """A trainer_state.json in the newest checkpoint folder, as the Trainer writes it (losses, evals)."""
    history: list[dict[str, float | int]] = []
    for step, lr in rates.items():
        history.append({"step": step, "epoch": step / 4, "loss": 2.0, "learning_rate": lr, "grad_norm": 1.0})
        if step % 4 == 0:
            history.append({"step": step, "epoch": step / 4, "eval_loss": 2.1})
    newest = max(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = {"global_step": int(newest.name.split("-")[1]), "log_history": history}
    (newest / "trainer_state.json").write_text(json.dumps(state))


def linear_decay(steps: list[int]) -> dict[int, float]:
    return {s: 1e-2 * (1 - s / 20) for s in steps if s > 0}


def test_analyze_uses_each_steps_logged_rate_and_says_so(tmp_path, capsys):
    paths = write_checkpoints(tmp_path / "out", "hf", STEPS)
    rates = linear_decay(STEPS)
    write_schedule(tmp_path / "out", rates)
    assert main(["analyze", str(tmp_path / "out"), "--window", str(WINDOW), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "trainer_state.json of checkpoint-12" in out["lr_source"]
    records = out["records"]
    assert [r["step"] for r in records] == STEPS[WINDOW:]
    assert [r["lr"] for r in records] == [rates[r["step"]] for r in records]  # a different η per record
    reference = analyze_checkpoints(paths, window=WINDOW, lr_by_step=rates)
    for got, want in zip(records, reference, strict=True):
        assert got["adiabatic"] == pytest.approx(want.adiabatic, rel=1e-9)
        assert got["regime"] == want.regime
    # One fixed η would give other 𝒜 values: the schedule is really used.
    fixed = analyze_checkpoints(paths, window=WINDOW, lr=rates[WINDOW])
    assert records[-1]["adiabatic"] != pytest.approx(fixed[-1].adiabatic, rel=1e-3)

    assert main(["analyze", str(tmp_path / "out"), "--window", str(WINDOW)]) == 0
    text = capsys.readouterr().out
    assert "η for 𝒜 and the regime: trainer_state.json of checkpoint-12" in text
    assert text.splitlines()[2].split()[-1] == "regime"


def test_steps_between_logs_take_the_last_rate_logged_before_them(tmp_path, capsys):
    write_checkpoints(tmp_path / "out", "hf", STEPS)
    rates = {s: lr for s, lr in linear_decay(STEPS).items() if s % 3 == 1}  # logging_steps=3: 1, 4, 7, 10
    write_schedule(tmp_path / "out", rates)
    assert main(["analyze", str(tmp_path / "out"), "--window", str(WINDOW), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)["records"]
    expected = {4: rates[4], 5: rates[4], 6: rates[4], 7: rates[7], 8: rates[7], 9: rates[7], 10: rates[10]}
    assert {r["step"]: r["lr"] for r in records if r["step"] <= 10} == expected
    assert {r["step"]: r["lr"] for r in records if r["step"] > 10} == {11: rates[10], 12: rates[10]}


def test_lr_flag_overrides_the_logged_schedule(tmp_path, capsys):
    write_checkpoints(tmp_path / "out", "hf", STEPS)
    write_schedule(tmp_path / "out", linear_decay(STEPS))
    assert main(["analyze", str(tmp_path / "out"), "--window", str(WINDOW), "--lr", "0.003", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lr_source"] == "--lr 0.003"
    assert {r["lr"] for r in out["records"]} == {0.003}


@pytest.mark.parametrize("fmt", ["hf", "pt"])
def test_without_a_schedule_or_lr_there_is_no_adiabatic_parameter_and_the_output_says_why(
    tmp_path, capsys, fmt
):
    write_checkpoints(tmp_path / "out", fmt, STEPS)  # "hf": a trainer_state.json without log_history
    assert main(["analyze", str(tmp_path / "out"), "--window", str(WINDOW)]) == 0
    text = capsys.readouterr().out
    assert "η for 𝒜 and the regime: none (no 𝒜 or regime: pass --lr)" in text
    assert "regime" not in text.splitlines()[2]


def test_analyze_checkpoints_refuses_lr_and_lr_by_step_together(tmp_path):
    paths = write_checkpoints(tmp_path / "out", "pt", STEPS)
    with pytest.raises(ValueError, match="pass one learning rate"):
        analyze_checkpoints(paths, window=WINDOW, lr=1e-3, lr_by_step={4: 1e-3})
    with pytest.raises(ValueError, match="rates > 0"):
        analyze_checkpoints(paths, window=WINDOW, lr_by_step={4: 0.0})


def test_a_real_trainer_run_gives_the_records_the_rate_it_logged(tmp_path, capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16)
    model = GPT2LMHeadModel(config)
    ids = torch.randint(0, 32, (24, 8), generator=torch.Generator().manual_seed(1))
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=5,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        lr_scheduler_type="linear",
        logging_steps=1,
        save_strategy="steps",
        save_steps=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    logged = {e["step"]: e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e}
    capsys.readouterr()
    assert main(["analyze", str(tmp_path / "out"), "--window", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["step"] for r in out["records"]] == [3, 4, 5]  # checkpoint-1 … checkpoint-5
    assert [r["lr"] for r in out["records"]] == [logged[s] for s in (3, 4, 5)]
    assert all(r["adiabatic"] is not None for r in out["records"])


def test_no_compile_message_when_the_kernel_is_already_built(tmp_path):
    # The "compiling the C++ kernel (once; about a minute)" line belongs to a build that really starts,
    # never to a start that imports the built kernel. A fresh process, so the kernel is loaded anew.
    import subprocess
    import sys

    from spectral_edge.tracking import _native

    if not (_native.build_dir(_native.build_name()) / _native.READY).exists():
        pytest.skip("the C++ kernel is not built on this machine (running this test would build it)")
    write_checkpoints(tmp_path / "out", "pt", STEPS)
    code = (
        "import sys; from spectral_edge.cli.main import main; "
        f"sys.exit(main(['analyze', {str(tmp_path / 'out')!r}, '--window', '4']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "records" in done.stdout
    assert "compil" not in done.stderr.lower() and "minute" not in done.stderr
