"""find_checkpoints orders a folder's checkpoints by step; read_sharded_state_dict reads every shard."""

from __future__ import annotations

import json

import pytest
import torch

from spectral_edge.tracking.checkpoint_folder import find_checkpoints, read_sharded_state_dict

safetensors_torch = pytest.importorskip("safetensors.torch")


def test_layouts_side_by_side_are_ordered_by_step_not_by_name(tmp_path):
    state = {"w": torch.ones(2)}
    for step in (5, 100):
        (tmp_path / f"checkpoint-{step}").mkdir()
        safetensors_torch.save_file(state, str(tmp_path / f"checkpoint-{step}" / "model.safetensors"))
    (tmp_path / "checkpoint-20").mkdir()
    torch.save(state, tmp_path / "checkpoint-20" / "pytorch_model.bin")
    torch.save(state, tmp_path / "epoch=0-step=50.ckpt")
    torch.save(state, tmp_path / "optimizer_50.pt")  # not a model
    torch.save(state, tmp_path / "rng_state_7.pth")  # not a model
    (tmp_path / "checkpoint-9").mkdir()  # no checkpoint file in it: not a checkpoint
    (tmp_path / "logs_2024").mkdir()
    found = find_checkpoints(tmp_path)
    assert [(c.step, c.path.name, c.layout) for c in found] == [
        (5, "checkpoint-5", "folder"),
        (20, "checkpoint-20", "folder"),
        (50, "epoch=0-step=50.ckpt", "file"),
        (100, "checkpoint-100", "folder"),
    ]
    assert found[1].files == (tmp_path / "checkpoint-20" / "pytorch_model.bin",)


def _shard(folder, tensors_per_shard, fmt):
    folder.mkdir()
    weight_map = {}
    n = len(tensors_per_shard)
    for i, tensors in enumerate(tensors_per_shard, start=1):
        if fmt == "safetensors":
            name = f"model-{i:05d}-of-{n:05d}.safetensors"
            safetensors_torch.save_file(tensors, str(folder / name))
        else:
            name = f"pytorch_model-{i:05d}-of-{n:05d}.bin"
            torch.save(tensors, folder / name)
        weight_map.update(dict.fromkeys(tensors, name))
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sharded_checkpoints_are_found_and_read_whole(tmp_path, fmt):
    torch.manual_seed(0)
    a = {"embed.weight": torch.randn(4, 3), "bn.running_mean": torch.zeros(3)}
    b = {"head.weight": torch.randn(2, 4), "step_count": torch.tensor(7)}
    for step in (10, 20):
        _shard(tmp_path / f"checkpoint-{step}", [a, b], fmt)
    found = find_checkpoints(tmp_path)
    assert [(c.step, c.layout, len(c.files)) for c in found] == [(10, "sharded", 2), (20, "sharded", 2)]
    state = read_sharded_state_dict(found[0].path)
    assert set(state) == {"embed.weight", "head.weight"}  # buffers and integer tensors left out
    torch.testing.assert_close(state["embed.weight"], a["embed.weight"])
    torch.testing.assert_close(state["head.weight"], b["head.weight"])


def test_a_missing_shard_is_named(tmp_path):
    _shard(tmp_path / "checkpoint-1", [{"a": torch.zeros(2)}, {"b": torch.zeros(2)}], "safetensors")
    (tmp_path / "checkpoint-1" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(
        FileNotFoundError, match="names the shard model-00002-of-00002.safetensors, which is missing"
    ):
        read_sharded_state_dict(tmp_path / "checkpoint-1")


def test_top_level_shards_are_one_checkpoint_not_a_series(tmp_path):
    _shard(tmp_path / "model", [{"a": torch.zeros(2)}, {"b": torch.zeros(2)}], "safetensors")
    with pytest.raises(ValueError, match="is one checkpoint .*model.safetensors.index.json"):
        find_checkpoints(tmp_path / "model")


def test_steps_from_trainer_state_and_step_words(tmp_path):
    """HF Trainer's own count wins over a folder's name; "step_500_v2" is step 500, not 2."""
    state = {"w": torch.ones(2)}
    for name, trainer_state in [
        ("checkpoint-1", {"global_step": 900}),
        ("checkpoint-2", {}),
        ("run-3", None),
    ]:
        (tmp_path / name).mkdir()
        safetensors_torch.save_file(state, str(tmp_path / name / "model.safetensors"))
        if trainer_state is not None:
            (tmp_path / name / "trainer_state.json").write_text(json.dumps(trainer_state))
    torch.save(state, tmp_path / "step_500_v2.pt")
    found = find_checkpoints(tmp_path)
    assert [(c.step, c.path.name) for c in found] == [
        (2, "checkpoint-2"),  # trainer_state.json without a global_step: the name's step
        (3, "run-3"),
        (500, "step_500_v2.pt"),
        (900, "checkpoint-1"),
    ]
