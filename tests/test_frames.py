"""DataFrames of runs and records (spectral_edge.frames, RunStore.to_pandas), with real pandas.

The reference is :meth:`RunStore.record_arrays`: every numeric column of the records frame equals its
column (σ_j as ``sigma_j`` equals ``singular_values[:, j - 1]``), NaN where it has NaN.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from spectral_edge.errors import MissingExtraError
from spectral_edge.frames import RunFrames, records_to_dataframe
from spectral_edge.store import RunStore
from spectral_edge.tracking.record import SpectralEvent
from tests.test_store import odd_records

pd = pytest.importorskip("pandas")

ARRAYS = {"singular_values": "sigma", "ratios": "ratio", "alpha": "alpha", "alpha_half": "alpha_half"}


def stored(tmp_path: Path) -> tuple[RunFrames, dict[str, np.ndarray]]:
    with RunStore(tmp_path / "run", mode="w") as store:
        for record in odd_records():
            store.add_record(record)
        store.add_event(
            SpectralEvent(step=1, kind="k_star_shift", k_before=1, k_after=2, ratio_after=math.inf)
        )
        store.add_eval(3, {"val_loss": 0.5, "val_acc": math.nan})
        store.add_eval(5, {"val_loss": 0.25})
        arrays = store.record_arrays()
    with RunStore(tmp_path / "run") as store:
        return store.to_pandas(), arrays


def assert_frame_matches_arrays(df, arrays: dict[str, np.ndarray], *, wall_time: bool = True) -> None:
    for name, values in arrays.items():
        if name == "wall_time" and not wall_time:
            assert "wall_time" not in df.columns
            continue
        if name in ARRAYS:
            for j in range(values.shape[1]):
                column = f"{ARRAYS[name]}_{j + 1}"
                assert df[column].dtype == np.float64, column
                np.testing.assert_array_equal(df[column].to_numpy(), values[:, j], err_msg=column)
        elif values.dtype == object:  # text: the regime
            assert df[name].tolist() == values.tolist(), name
        else:
            assert df[name].dtype == values.dtype, (name, df[name].dtype, values.dtype)
            np.testing.assert_array_equal(df[name].to_numpy(), values, err_msg=name)


def test_to_pandas_records_equal_record_arrays(tmp_path):
    frames, arrays = stored(tmp_path)
    df = frames.records
    assert isinstance(frames, RunFrames) and isinstance(df, pd.DataFrame)
    assert len(df) == 3
    assert list(df.columns[:2]) == ["step", "wall_time"]
    assert df["step"].dtype == np.int64 and df["k_star"].dtype == np.int64
    assert [c for c in df.columns if c.startswith("sigma_")] == ["sigma_1", "sigma_2", "sigma_3", "sigma_4"]
    assert {"group.attn.k_star", "group.attn.gap_ratio", "group.mlp.gap_ratio", "metric.loss"} <= set(
        df.columns
    )
    assert_frame_matches_arrays(df, arrays)
    # the short record (W = 3) has NaN in the fourth σ; a missing group reads NaN; inf stays inf
    assert math.isnan(df["sigma_4"].iloc[2]) and math.isnan(df["group.attn.k_star"].iloc[1])
    assert df["group.mlp.gap_ratio"].iloc[1] == math.inf
    assert df["regime"].tolist() == ["plateau", "plateau", None]


def test_to_pandas_events_and_long_evals(tmp_path):
    frames, _ = stored(tmp_path)
    events = frames.events
    assert events["kind"].tolist() == ["k_star_shift"]
    assert events["ratio_after"].tolist() == [math.inf] and events["k_after"].tolist() == [2]
    assert {"step", "wall_time", "message"} <= set(events.columns)
    evals = frames.evals
    assert list(evals.columns) == ["step", "name", "value", "wall_time"]
    assert evals["step"].dtype == np.int64 and evals["value"].dtype == np.float64
    assert evals[["step", "name"]].values.tolist() == [[3, "val_loss"], [3, "val_acc"], [5, "val_loss"]]
    assert evals["value"].iloc[0] == 0.5 and math.isnan(evals["value"].iloc[1])
    wide = evals.pivot_table(index="step", columns="name", values="value", dropna=False)
    assert wide.loc[5, "val_loss"] == 0.25


def test_records_to_dataframe_equals_the_stored_run(tmp_path):
    records = odd_records()
    frames, arrays = stored(tmp_path)
    df = records_to_dataframe(records)
    assert list(df.columns) == [c for c in frames.records.columns if c != "wall_time"]
    assert_frame_matches_arrays(df, arrays, wall_time=False)


def test_records_to_dataframe_from_a_monitor():
    import torch

    from spectral_edge import SpectralMonitor

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = SpectralMonitor(model, window=3, lr=opt)
    for _ in range(6):
        opt.zero_grad()
        model(torch.randn(8, 3)).pow(2).mean().backward()
        opt.step()
        mon.step(loss=0.5)
    df = records_to_dataframe(mon.records)
    assert df["step"].tolist() == [r.step for r in mon.records]
    assert df["group.0.k_star"].tolist() == [r.groups["0"].k_star for r in mon.records]
    np.testing.assert_array_equal(
        df[["sigma_1", "sigma_2", "sigma_3"]].to_numpy(), [r.singular_values for r in mon.records]
    )
    assert df["metric.loss"].tolist() == [0.5] * len(mon.records)
    assert records_to_dataframe([]).empty
    with pytest.raises(TypeError, match="SpectralRecord objects, got dict"):
        records_to_dataframe([{}])


def test_missing_pandas_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'spectral-edge\[pandas\]'"):
        records_to_dataframe(odd_records())
