"""Tests of the run store: round trips, WAL concurrency, crash safety, schema growth, export, errors."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import spectral_edge.store as store_module
from spectral_edge.errors import RunStoreError, StoreWriteError
from spectral_edge.store import RunStore, StoreBacklog, export_run
from spectral_edge.tracking.record import GroupSpectrum, SpectralEvent, SpectralRecord
from tests.sqlite_checks import integrity

SRC = Path(store_module.__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def make_record(step: int, window: int = 4, **overrides: object) -> SpectralRecord:
    """A record with arbitrary but distinct numbers; overrides replace any field."""
    sv = np.linspace(2.0, 0.5, window) * (1.0 + step)
    values: dict[str, object] = dict(
        step=step,
        window=window,
        singular_values=sv,
        ratios=sv[:-1] / sv[1:],
        k_star=1,
        gap_ratio=1.0 + 0.1 * step,
        gap=0.25,
        gap_lambda=0.5,
        k95=2,
        k_star_weighted=1,
        gap_ratio_weighted=1.5,
        g23=0.3,
        rank=window,
        effective_rank=2.5,
        alpha=np.full(window, 0.9),
        alpha_half=np.full(window // 2, 0.8),
        delta_c_fro=0.01 * step,
        davis_kahan=0.02,
        adiabatic=0.5,
        regime="plateau",
        lr=1e-3,
        update_norm=0.1,
        noise_level=0.05,
        bbp_ratio=3.0,
        groups={"attn": GroupSpectrum(k_star=2, gap_ratio=4.0, singular_values=sv / 2)},
        metrics={"loss": 1.0 / (1 + step)},
    )
    values.update(overrides)
    return SpectralRecord(**values)


def assert_same(actual: object, expected: object) -> None:
    """Equality that treats NaN as equal to NaN and compares arrays element-wise."""
    if isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray)
        np.testing.assert_array_equal(actual, expected)
    elif isinstance(expected, float) and math.isnan(expected):
        assert isinstance(actual, float) and math.isnan(actual)
    elif isinstance(expected, GroupSpectrum):
        assert isinstance(actual, dict)
        for f in dataclasses.fields(expected):
            assert_same(actual[f.name], getattr(expected, f.name))
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys()
        for key in expected:
            assert_same(actual[key], expected[key])
    else:
        assert actual == expected and type(actual) is type(expected), (actual, expected)


def assert_record(row: dict, record: SpectralRecord) -> None:
    for f in dataclasses.fields(record):
        assert_same(row[f.name], getattr(record, f.name))


def odd_records() -> list[SpectralRecord]:
    """Records with inf and NaN in scalars and arrays, None optionals, and a varying window."""
    inf_sv = np.array([np.inf, 2.0, 1.0, 0.0])
    return [
        make_record(0),
        make_record(
            1,
            singular_values=inf_sv,
            ratios=np.array([np.inf, 2.0, np.inf]),
            gap_ratio=math.inf,
            gap=-math.inf,
            bbp_ratio=math.nan,
            alpha=np.array([np.nan, 1.0, 0.5, 0.25]),
            metrics={"loss": math.nan, "acc": math.inf},
            groups={"mlp": GroupSpectrum(k_star=1, gap_ratio=math.inf, singular_values=inf_sv)},
        ),
        make_record(2, window=3, g23=None, adiabatic=None, regime=None, lr=None, alpha_half=None, groups={}),
    ]


def test_records_round_trip_with_arrays_and_nonfinite(tmp_path: Path) -> None:
    records = odd_records()
    with RunStore(tmp_path / "run", mode="w") as store:
        for record in records:
            store.add_record(record, wall_time=100.0 + record.step)
        assert len(store) == 3
    with RunStore(tmp_path / "run", mode="r") as store:
        rows = store.records()
        assert len(rows) == 3
        for row, record in zip(rows, records, strict=True):
            assert_record(row, record)
        assert [row["wall_time"] for row in rows] == [100.0, 101.0, 102.0]
        assert_record(store.last_record(), records[-1])


def test_json_columns_match_to_dict_and_nan_is_null(tmp_path: Path) -> None:
    record = odd_records()[1]
    with RunStore(tmp_path, mode="w") as store:
        store.add_record(record)
    conn = sqlite3.connect(f"{(tmp_path / 'run.db').as_uri()}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM records").fetchone()
    finally:
        conn.close()
    expected = record.to_dict()
    for name in ("singular_values", "ratios", "alpha", "alpha_half", "groups", "metrics"):
        assert json.loads(row[name]) == expected[name]
    assert row["gap_ratio"] == math.inf and row["gap"] == -math.inf  # SQL REAL infinities
    assert row["bbp_ratio"] is None and json.loads(row["nan_fields"]) == ["bbp_ratio"]


def test_events_evals_config_meta_round_trip(tmp_path: Path) -> None:
    events = [
        SpectralEvent(
            step=5, kind="gap_opening", k_before=None, k_after=2, ratio_after=math.inf, message="open"
        ),
        SpectralEvent(
            step=9, kind="gap_collapse", k_before=2, k_after=1, ratio_before=math.nan, ratio_after=1.1
        ),
    ]
    config = {"lr": 0.1, "sizes": [64, 64], "max": math.inf, "nested": {"a": None}, "np": np.float32(0.5)}
    with RunStore(tmp_path, mode="w") as store:
        store.write_config({"replaced": True})
        store.write_config(config)
        for event in events:
            store.add_event(event)
        store.add_eval(20, {"val_loss": 0.25, "val_acc": 0.5})
        store.add_eval(10, {"val_loss": math.nan})
        store.add_eval(np.int64(30), {"val_loss": np.float32(0.125)})
    with RunStore(tmp_path, mode="r") as store:
        got = store.events()
        assert got[0] == events[0]
        assert got[1].ratio_before is not None and math.isnan(got[1].ratio_before)
        assert dataclasses.replace(got[1], ratio_before=None) == dataclasses.replace(
            events[1], ratio_before=None
        )
        assert store.config() == {**config, "np": 0.5}
        evals = store.evals()
        assert evals.keys() == {"val_loss", "val_acc"}
        steps, values = evals["val_loss"]
        assert steps.dtype == np.int64 and steps.tolist() == [10, 20, 30]
        np.testing.assert_array_equal(values, [np.nan, 0.25, 0.125])
        assert evals["val_acc"][1].tolist() == [0.5]
        meta = store.meta()
        assert meta["schema_version"] == store_module.SCHEMA_VERSION
        assert meta["numpy"] == np.__version__
        assert {"created", "python", "torch", "spectral_edge", "platform"} <= meta.keys()


def test_record_arrays_pads_varying_windows_with_nan(tmp_path: Path) -> None:
    records = odd_records()
    with RunStore(tmp_path, mode="w") as store:
        for record in records:
            store.add_record(record)
        arrays = store.record_arrays()
    assert arrays["step"].dtype == np.int64 and arrays["step"].tolist() == [0, 1, 2]
    np.testing.assert_array_equal(arrays["gap_ratio"], [1.0, math.inf, 1.2])
    np.testing.assert_array_equal(arrays["g23"], [0.3, 0.3, np.nan])  # None becomes NaN
    assert arrays["regime"].tolist() == ["plateau", "plateau", None]
    assert arrays["singular_values"].shape == (3, 4)
    np.testing.assert_array_equal(arrays["singular_values"][2], [*records[2].singular_values, np.nan])
    np.testing.assert_array_equal(arrays["alpha_half"][2], [np.nan, np.nan])
    np.testing.assert_array_equal(arrays["group.attn.k_star"], [2, np.nan, np.nan])
    np.testing.assert_array_equal(arrays["group.mlp.gap_ratio"], [np.nan, np.inf, np.nan])
    np.testing.assert_array_equal(arrays["metric.acc"], [np.nan, np.inf, np.nan])


def test_wal_mode_is_on(tmp_path: Path) -> None:
    with RunStore(tmp_path, mode="w") as store:
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    conn = sqlite3.connect(tmp_path / "run.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # stored in the file itself
    finally:
        conn.close()


def test_reader_sees_commits_while_the_writer_is_open(tmp_path: Path) -> None:
    with RunStore(tmp_path / "run", mode="w") as writer:
        writer.add_record(make_record(0))
        with RunStore(tmp_path / "run" / "run.db", mode="r") as reader:
            assert len(reader) == 1
            writer.add_record(make_record(1))
            writer.add_eval(1, {"loss": 0.5})
            assert len(reader) == 2
            assert reader.last_record()["step"] == 1
            assert reader.evals()["loss"][1].tolist() == [0.5]
            with pytest.raises(RunStoreError, match=r"read-only \(mode='r'\).*mode='a'"):
                reader.add_record(make_record(2))


_WRITER_SCRIPT = """
import sys
from test_store import make_record
from spectral_edge.store import RunStore

with RunStore(sys.argv[1], mode="w", write_behind=sys.argv[2] == "1") as store:
    for step in range(1_000_000):
        store.add_record(make_record(step))
        print(step + 1, flush=True)  # printed once add_record returned: committed, or handed over
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.parametrize("write_behind", [False, True])
def test_killed_writer_keeps_every_committed_record(tmp_path: Path, write_behind: bool) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER_SCRIPT, str(run), str(int(write_behind))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        watchdog = threading.Timer(60.0, proc.kill)  # never hang the suite if the writer stalls
        watchdog.start()
        try:
            committed = 0
            for line in proc.stdout:
                committed = int(line)
                if committed >= 25:
                    break
            proc.kill()  # SIGKILL: no atexit, no close(), mid-loop
            proc.wait(timeout=30)
            # The writer ran on while this loop read: the lines it printed before the kill are in the pipe.
            committed = max([committed, *(int(line) for line in proc.stdout.read().split())])
        finally:
            watchdog.cancel()
        stderr = proc.stderr.read()
    assert committed >= 25, stderr
    assert proc.returncode == -9

    assert integrity(run / "run.db") == "ok"
    with RunStore(run, mode="r") as store:
        n = len(store)
        # The writer may have committed one more record than it got to print; with write_behind the
        # last record it printed may still have been in flight (but never more than that one).
        assert committed - write_behind <= n <= committed + 1
        assert [row["step"] for row in store.records()] == list(range(n))
        assert_record(store.last_record(), make_record(n - 1))
    with RunStore(run, mode="a") as store:
        store.add_record(make_record(n))
        assert len(store) == n + 1


@dataclasses.dataclass(frozen=True)
class _RecordWithNewFields(SpectralRecord):
    """Stands in for a SpectralRecord that gained fields in a later version."""

    sharpness: float = 0.0
    phase: str | None = None
    extra_counts: np.ndarray | None = None


def test_append_adds_columns_for_new_fields(tmp_path: Path) -> None:
    with RunStore(tmp_path, mode="w") as store:
        store.add_record(make_record(0))
    old = make_record(1)
    base = {f.name: getattr(old, f.name) for f in dataclasses.fields(old)}
    newer = _RecordWithNewFields(**base, sharpness=math.nan, phase="rise", extra_counts=np.array([1.0, 2.0]))
    with RunStore(tmp_path, mode="a") as store:
        store.add_record(newer)
        store.add_record(make_record(2))  # an old-style record after the columns exist
    with RunStore(tmp_path, mode="r") as store:
        rows = store.records()
        assert [row["phase"] for row in rows] == [None, "rise", None]
        assert [row["sharpness"] is None for row in rows] == [True, False, True]
        assert math.isnan(rows[1]["sharpness"])
        assert_record(rows[1], newer)
        arrays = store.record_arrays()
    assert arrays["extra_counts"].shape == (3, 2)
    np.testing.assert_array_equal(arrays["sharpness"], [np.nan] * 3)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_round_trips_values(tmp_path: Path, fmt: str) -> None:
    records = odd_records()
    events = [SpectralEvent(step=1, kind="k_star_shift", k_before=1, k_after=2, ratio_after=math.inf)]
    with RunStore(tmp_path / "run", mode="w") as store:
        for record in records:
            store.add_record(record)
        store.add_event(events[0])
        store.add_eval(3, {"val_loss": 0.5, "val_acc": math.nan})
        arrays = store.record_arrays()

    if fmt == "parquet":
        pq = pytest.importorskip("pyarrow.parquet")
        path = export_run(tmp_path / "run", "parquet", out=tmp_path / "out" / "flat.parquet")
        table = pq.read_table(path).to_pydict()
        evals = pq.read_table(tmp_path / "out" / "flat_evals.parquet").to_pydict()
        events_table = pq.read_table(tmp_path / "out" / "flat_events.parquet").to_pydict()

        def column(name: str) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in table[name]], dtype=float)
    else:
        path = export_run(tmp_path / "run")
        assert path == tmp_path / "run" / "records.csv"
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        table = {name: [row[name] for row in rows] for name in rows[0]}
        with path.with_name("records_evals.csv").open(newline="") as fh:
            evals = {k: [row[k] for row in rows_] for rows_ in [list(csv.DictReader(fh))] for k in rows_[0]}
        with path.with_name("records_events.csv").open(newline="") as fh:
            events_table = {k: [r[k] for r in rs] for rs in [list(csv.DictReader(fh))] for k in rs[0]}

        def column(name: str) -> np.ndarray:
            return np.array([np.nan if v == "" else float(v) for v in table[name]])

    width = arrays["singular_values"].shape[1]
    expected_sigma = [f"sigma_{j}" for j in range(1, width + 1)]
    assert [name for name in table if name.startswith("sigma_")] == expected_sigma
    for j in range(width):
        np.testing.assert_array_equal(column(f"sigma_{j + 1}"), arrays["singular_values"][:, j])
        np.testing.assert_array_equal(column(f"alpha_{j + 1}"), arrays["alpha"][:, j])
    expected = {
        name: arrays[name]
        for name in (
            "step",
            "gap_ratio",
            "gap",
            "bbp_ratio",
            "g23",
            "group.attn.k_star",
            "group.mlp.gap_ratio",
        )
    }
    expected.update(
        {
            "metric.loss": arrays["metric.loss"],
            "metric.acc": arrays["metric.acc"],
            "ratio_3": arrays["ratios"][:, 2],
            "alpha_half_2": arrays["alpha_half"][:, 1],
        }
    )
    for name, values in expected.items():
        np.testing.assert_array_equal(column(name), values, err_msg=name)
    assert [str(v) if v is not None else "" for v in table["regime"]] == ["plateau", "plateau", ""]
    assert [str(v) for v in evals["name"]] == ["val_loss", "val_acc"]
    assert float(evals["value"][0]) == 0.5 and math.isnan(float(evals["value"][1]))
    assert [str(v) for v in events_table["kind"]] == ["k_star_shift"]
    assert float(events_table["ratio_after"][0]) == math.inf


def test_export_rejects_bad_format_before_reading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"fmt must be 'csv' or 'parquet', got 'xlsx'"):
        export_run(tmp_path / "does-not-exist", fmt="xlsx")


def test_missing_run_is_a_clear_error_and_nothing_is_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(RunStoreError, match=r"no spectral-edge run at .*nope.*expected a run directory"):
        RunStore(missing, mode="r")
    with pytest.raises(RunStoreError, match="no spectral-edge run"):
        export_run(missing)
    assert not missing.exists()


def test_half_written_run_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "run.db").touch()  # killed before the schema transaction committed
    with pytest.raises(RunStoreError, match=r"empty database.*half-written.*mode='w'"):
        RunStore(tmp_path / "empty", mode="r")
    with RunStore(tmp_path / "empty", mode="a") as store:  # appending initialises it: nothing to lose
        store.add_record(make_record(0))
        assert len(store) == 1

    partial = tmp_path / "partial" / "run.db"
    partial.parent.mkdir()
    conn = sqlite3.connect(partial)
    try:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.commit()
    finally:
        conn.close()
    for mode in ("r", "a", "w"):  # never silently adopted, nor deleted without overwrite=True
        with pytest.raises(RunStoreError, match=r"is not a spectral-edge run: it lacks the tables config"):
            RunStore(partial, mode=mode)
    with RunStore(partial, mode="w", overwrite=True) as store:
        assert len(store) == 0

    (tmp_path / "text.db").write_text("not a database at all, just some text that is long enough" * 20)
    with pytest.raises(RunStoreError, match=r"text\.db is not an SQLite database"):
        RunStore(tmp_path / "text.db", mode="r")


def test_mode_w_protects_existing_records(tmp_path: Path) -> None:
    with RunStore(tmp_path, mode="w") as store:
        store.write_config({"a": 1})  # a run without records is simply recreated
    with RunStore(tmp_path, mode="w") as store:
        assert store.config() == {}
        store.add_record(make_record(0))
    with pytest.raises(RunStoreError, match=r"already holds a run with 1 records.*mode='a'.*overwrite=True"):
        RunStore(tmp_path, mode="w")
    with RunStore(tmp_path, mode="a") as store:
        assert len(store) == 1
    with RunStore(tmp_path, mode="w", overwrite=True) as store:
        assert len(store) == 0


def test_argument_and_state_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"mode must be .* got 'x'"):
        RunStore(tmp_path, mode="x")  # type: ignore[arg-type]
    store = RunStore(tmp_path, mode="w")
    with pytest.raises(TypeError, match="expects a SpectralRecord, got dict"):
        store.add_record({"step": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="eval 'loss' must be a number"):
        store.add_eval(1, {"loss": "low"})
    with pytest.raises(TypeError, match=r"cannot store config\['model'\] \(a object\)"):
        store.write_config({"model": object()})
    store.close()
    store.close()
    with pytest.raises(RunStoreError, match="is closed"):
        len(store)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    with RunStore(tmp_path, mode="w"):
        pass
    conn = sqlite3.connect(tmp_path / "run.db")
    try:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(RunStoreError, match=r"schema version 99.*upgrade spectral-edge"):
        RunStore(tmp_path, mode="r")


def test_truncate_after_drops_only_later_rows_of_every_table(tmp_path: Path) -> None:
    """Resuming from a checkpoint at step 6: what the interrupted run wrote after it goes, the rest stays."""
    with RunStore(tmp_path, mode="w") as store:
        for step in range(4, 11):
            store.add_record(make_record(step))
            store.add_eval(step, {"loss": 1.0 / step})
        store.add_event(SpectralEvent(step=5, kind="gap_opening"))
        store.add_event(SpectralEvent(step=9, kind="gap_collapse"))
        assert store.truncate_after(6) == 4 + 4 + 1
        assert [r["step"] for r in store.records()] == [4, 5, 6]
        assert [e.step for e in store.events()] == [5]
        assert store.evals()["loss"][0].tolist() == [4, 5, 6]
        assert store.truncate_after(6) == 0
    with RunStore(tmp_path, mode="r") as store, pytest.raises(RunStoreError, match="read-only"):
        store.truncate_after(0)


def test_arrays_round_trip_and_old_runs_without_the_table(tmp_path: Path) -> None:
    with RunStore(tmp_path / "new", mode="w") as store:
        store.add_array(20, "sigma", [3.0, math.inf, 1.0])
        store.add_array(10, "sigma", [2.0, 1.0])
        store.add_array(10, "other", np.arange(4))
        store.add_array(30, "sigma", [1.0])
        assert store.truncate_after(20) == 1
    with RunStore(tmp_path / "new", mode="r") as store:
        arrays = store.arrays()
        steps, block = arrays["sigma"]
        assert steps.tolist() == [10, 20]
        np.testing.assert_array_equal(block, [[2.0, 1.0, np.nan], [3.0, np.inf, 1.0]])
        assert arrays["other"][1].tolist() == [[0.0, 1.0, 2.0, 3.0]]
    # A run written before the arrays table existed: readers see no arrays, writers add the table.
    with RunStore(tmp_path / "old", mode="w") as store:
        store.add_eval(1, {"loss": 1.0})
    conn = sqlite3.connect(tmp_path / "old" / "run.db")
    conn.execute("DROP TABLE arrays")
    conn.commit()
    conn.close()
    with RunStore(tmp_path / "old", mode="r") as store:
        assert store.arrays() == {}
    with RunStore(tmp_path / "old", mode="a") as store:
        store.add_array(2, "sigma", [1.0])
        assert store.arrays()["sigma"][0].tolist() == [2]


def _write_everything(store: RunStore) -> None:
    store.write_config({"lr": 0.1})
    for record in odd_records():
        store.add_record(record)
    store.add_event(SpectralEvent(step=2, kind="gap_opening", k_before=1, k_after=2, message="opened"))
    store.add_eval(2, {"loss": 0.5, "acc": math.nan})
    store.add_array(2, "wq0_sigma", [3.0, 2.0])


def test_write_behind_stores_the_same_as_direct_writes(tmp_path: Path) -> None:
    stores = {}
    for write_behind in (False, True):
        with RunStore(tmp_path / str(write_behind), mode="w", write_behind=write_behind) as store:
            _write_everything(store)
        stores[write_behind] = RunStore(tmp_path / str(write_behind), mode="r")
    try:
        direct, behind = stores[False], stores[True]
        assert len(behind) == len(odd_records())
        for row, record in zip(behind.records(), odd_records(), strict=True):
            assert_record(row, record)
        assert behind.events() == direct.events()
        assert behind.config() == direct.config() == {"lr": 0.1}
        for mine, theirs in ((behind.evals(), direct.evals()), (behind.arrays(), direct.arrays())):
            assert mine.keys() == theirs.keys()
            for name in mine:
                for a, b in zip(mine[name], theirs[name], strict=True):
                    np.testing.assert_array_equal(a, b)
    finally:
        for store in stores.values():
            store.close()


def test_write_behind_has_at_most_one_write_in_flight(tmp_path: Path) -> None:
    """After the k-th add_record returns, another connection sees k − 1 or k records: the previous
    write is committed before the next is handed over. Reads through the writing store see all k."""
    with RunStore(tmp_path / "run", mode="w", write_behind=True) as writer:
        with RunStore(tmp_path / "run", mode="r") as reader:
            for k in range(1, 30):
                writer.add_record(make_record(k - 1))
                assert k - 1 <= len(reader) <= k
            writer.flush()
            assert len(reader) == 29
            writer.add_record(make_record(29))
            assert len(writer) == 30  # a read through the writer waits for its writes
            assert len(reader) == 30


def test_write_behind_raises_a_failed_write_at_the_next_call_and_keeps_the_rest(tmp_path: Path) -> None:
    bad = _RecordWithNewFields(**dataclasses.asdict(make_record(1)) | {"phase": object()})  # not storable
    with RunStore(tmp_path / "run", mode="w", write_behind=True) as store:
        store.add_record(make_record(0))
        store.add_record(bad)  # handed over: the JSON encoding fails on the writer thread
        with pytest.raises(TypeError, match="phase"):
            store.add_record(make_record(2))  # still handed over before the error is raised
        store.add_record(make_record(3))
        store.add_record(bad)
        with pytest.raises(TypeError, match="phase"):
            store.flush()
        store.flush()  # the error was raised once
        assert [row["step"] for row in store.records()] == [0, 2, 3]


def test_write_behind_close_raises_the_last_failed_write_after_closing(tmp_path: Path) -> None:
    bad = _RecordWithNewFields(**dataclasses.asdict(make_record(1)) | {"phase": object()})
    store = RunStore(tmp_path / "run", mode="w", write_behind=True)
    store.add_record(make_record(0))
    store.add_record(bad)
    with pytest.raises(TypeError, match="phase"):
        store.close()
    with pytest.raises(RunStoreError, match="closed"):
        store.add_record(make_record(2))  # refused at once, not on the writer thread
    with RunStore(tmp_path / "run", mode="r") as reader:
        assert len(reader) == 1


def test_write_behind_config_and_truncation_still_happen_after_a_failed_write(tmp_path: Path) -> None:
    """write_config and truncate_after do their own work first, then raise the earlier write's error,
    as add_* do."""
    bad = _RecordWithNewFields(**dataclasses.asdict(make_record(1)) | {"phase": object()})
    with RunStore(tmp_path / "run", mode="w", write_behind=True) as store:
        store.add_eval(5, {"loss": 1.0})
        store.add_record(bad)
        with pytest.raises(TypeError, match="phase"):
            store.write_config({"a": 1})
        assert store.config() == {"a": 1}
        store.add_record(bad)
        with pytest.raises(TypeError, match="phase"):
            store.truncate_after(2)
        assert store.evals() == {}


def test_a_failed_commit_rolls_back_so_later_writes_are_not_swallowed(tmp_path: Path) -> None:
    """A COMMIT that fails leaves no open transaction behind for the next autocommit INSERT to join
    (which close() would then roll back)."""

    class CommitFailsOnce:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn, self.failed = conn, False

        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
            if sql == "COMMIT" and not self.failed:
                self.failed = True
                raise sqlite3.OperationalError("database is locked")
            return self.conn.execute(sql, *args)

        def __getattr__(self, name: str) -> object:
            return getattr(self.conn, name)

    path = tmp_path / "run"
    with RunStore(path, mode="w") as store:
        real = store._conn
        store._conn = CommitFailsOnce(real)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store.add_eval(1, {"loss": 1.0})
        assert not real.in_transaction
        store.add_record(make_record(0))
        store._conn = real
    with RunStore(path, mode="r") as reader:
        assert len(reader) == 1 and reader.evals() == {}


# -- one writer at a time ------------------------------------------------------------------------------


def test_a_second_writer_is_refused_and_the_first_keeps_every_record(tmp_path: Path) -> None:
    """Regression (issue 14, item 3): a second writer opened before the first had written a record
    unlinked run.db (mode='w' found no records to protect) while the first went on writing into the
    deleted file: half the records were gone, without a word. The path's writer lock refuses it."""
    run = tmp_path / "run"
    first = RunStore(run, mode="w")
    for mode, overwrite in (("w", False), ("w", True), ("a", False)):
        with pytest.raises(
            RunStoreError, match=rf"(?s)already open for writing by another .* \(pid {os.getpid()}\)"
        ):
            RunStore(run, mode=mode, overwrite=overwrite)
    for step in range(36):
        first.add_record(make_record(step))
        if step == 17:
            with RunStore(run, mode="r") as reader:  # readers take no lock
                assert len(reader) == 18
    first.close()
    with RunStore(run, mode="r") as store:
        assert [row["step"] for row in store.records()] == list(range(36))
    with RunStore(run, mode="a") as store:  # the lock went with close()
        store.add_record(make_record(36))
    assert (run / "run.db.lock").read_text() == ""  # no stale pid left behind


_HOLDER_SCRIPT = """
import os, sys, time
from test_store import make_record
from spectral_edge.store import RunStore

store = RunStore(sys.argv[1], mode="w", write_behind=True)
for step in range(10):
    store.add_record(make_record(step))
store.flush()
child = 0
if sys.argv[2] == "fork":  # a child that outlives this process, as a DataLoader worker can
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
print("ready", child, flush=True)
if sys.stdin.readline().strip() == "close":
    for step in range(10, 20):
        store.add_record(make_record(step))
    store.close()
    print("closed", flush=True)
sys.stdin.readline()
"""


@contextlib.contextmanager
def _holding(run: Path, how: str = "hold") -> Iterator[tuple[subprocess.Popen, int]]:
    """A process holding ``run`` open for writing with 10 records committed, and the pid of the child it
    forked (0 without ``how="fork"``); both are killed on leaving."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}
    child = 0
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER_SCRIPT, str(run), how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    ) as proc:
        try:
            ready, child_pid = proc.stdout.readline().split()
            assert ready == "ready"
            child = int(child_pid)
            yield proc, child
        finally:
            proc.kill()
            proc.wait(timeout=30)
            if child:
                os.kill(child, signal.SIGKILL)  # the orphan: init reaps it


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
def test_a_writer_in_another_process_is_named_and_nothing_is_deleted(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with _holding(run) as (proc, _):
        with pytest.raises(RunStoreError, match=rf"already open for writing by process {proc.pid} on host"):
            RunStore(run, mode="w", overwrite=True)
        with RunStore(run, mode="r") as reader:
            assert len(reader) == 10
        proc.stdin.write("close\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "closed"
        with RunStore(run, mode="a") as store:  # free once the other writer closed
            assert [row["step"] for row in store.records()] == list(range(20))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and flock")
@pytest.mark.parametrize("how", ["hold", "fork"])
def test_a_killed_writer_leaves_no_lock_behind(tmp_path: Path, how: str) -> None:
    """SIGKILL runs no cleanup; the lock is the kernel's and dies with its process. With ``fork``, a
    child forked while the store was open (a DataLoader worker) outlives the writer: it closed its copy
    of the lock at fork, so the lock still ends with the writer."""
    run = tmp_path / "run"
    with _holding(run, how) as (proc, child):
        with pytest.raises(RunStoreError, match="already open for writing"):
            RunStore(run, mode="a")
        proc.kill()
        assert proc.wait(timeout=30) == -9
        if how == "fork":
            os.kill(child, 0)  # still alive, still holding its copy of the descriptors it inherited
        with RunStore(run, mode="a") as store:
            assert [row["step"] for row in store.records()] == list(range(10))
            store.add_record(make_record(10))


def test_opening_for_reading_creates_nothing(tmp_path: Path) -> None:
    """Regression (issue 14, item 7): RunStore("typo") opened an appending store, creating typo/run.db."""
    typo = tmp_path / "typo"
    with pytest.raises(RunStoreError, match=r"no spectral-edge run at .*typo"):
        RunStore(typo)
    assert not typo.exists()
    with RunStore(tmp_path / "run", mode="w") as store:
        store.add_record(make_record(0))
    with RunStore(tmp_path / "run") as store:  # the default mode reads
        assert store.mode == "r" and len(store) == 1
        with pytest.raises(RunStoreError, match="read-only"):
            store.add_record(make_record(1))


# -- writes the disk refuses ---------------------------------------------------------------------------


@pytest.mark.parametrize("write_behind", [False, True])
def test_refused_writes_are_held_retried_in_order_and_counted_when_lost(
    tmp_path: Path, write_behind: bool
) -> None:
    """Regression (issue 14, item 4): a write SQLite refused (a full disk) was dropped, the next ones too.
    Now the store holds up to max_held of them, retries them before each later write, and counts the
    rest as lost; its errors say which. ``PRAGMA query_only`` refuses writes as a read-only file does."""
    run = tmp_path / "run"
    store = RunStore(run, mode="w", write_behind=write_behind, max_held=3)
    for step in range(2):
        store.add_record(make_record(step))
    store.flush()
    store._conn.execute("PRAGMA query_only = 1")  # no write in flight after flush
    errors = []
    for step in range(2, 8):
        try:
            store.add_record(make_record(step))
        except StoreWriteError as exc:
            errors.append(exc)
    try:
        store.flush()
    except StoreWriteError as exc:
        errors.append(exc)
    assert len(errors) == 6  # one per refused write, raised a call later with write_behind
    assert [e.started for e in errors] == [True, False, False, False, False, False]
    assert [e.first_loss for e in errors] == [False, False, False, True, False, False]
    assert "could not commit a record (attempt to write a readonly database" in str(errors[0])
    assert "held for retry: 1 record; lost: none" in str(errors[0])
    assert "held for retry: 3 records; lost: 1 record" in str(errors[3]) and "so it is lost" in str(errors[3])
    assert store.backlog() == StoreBacklog(
        held={"record": 3},
        lost={"record": 3},
        max_held=3,
        error="attempt to write a readonly database, SQLITE_READONLY",
    )

    store._conn.execute("PRAGMA query_only = 0")  # room again: the next write first writes the held ones
    store.add_record(make_record(8))
    store.flush()
    assert store.backlog().n_held == 0 and store.backlog().lost == {"record": 3}
    assert [row["step"] for row in store.records()] == [0, 1, 2, 3, 4, 8]
    with pytest.raises(StoreWriteError, match=r"closed without storing 3 records") as closing:
        store.close()
    assert closing.value.closed and closing.value.backlog.lost == {"record": 3}
    store.close()  # reported once
    with RunStore(run, mode="r") as reader:
        assert [row["step"] for row in reader.records()] == [0, 1, 2, 3, 4, 8]


def test_held_writes_are_retried_at_close(tmp_path: Path) -> None:
    run = tmp_path / "run"
    store = RunStore(run, mode="w")
    store._conn.execute("PRAGMA query_only = 1")
    with pytest.raises(StoreWriteError, match="held for retry: 1 evaluation"):
        store.add_eval(5, {"loss": 0.5})
    with pytest.raises(StoreWriteError, match="held for retry: 1 record, 1 evaluation"):
        store.add_record(make_record(5))
    store._conn.execute("PRAGMA query_only = 0")
    store.close()  # both written: nothing lost, nothing raised
    assert store.backlog() == StoreBacklog(held={}, lost={}, max_held=1000, error=store.backlog().error)
    with RunStore(run, mode="r") as reader:
        assert len(reader) == 1 and reader.evals()["loss"][0].tolist() == [5]


_FULL_DISK_SCRIPT = """
import json, os, resource, signal, sys
from test_store import make_record
from spectral_edge.errors import StoreWriteError
from spectral_edge.store import RunStore

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
run, limit = sys.argv[1], sys.argv[2]
store = RunStore(run, mode="w", write_behind=True, max_held=5)
for step in range(10):
    store.add_record(make_record(step))
store.flush()
wal = os.path.getsize(os.path.join(run, "run.db-wal"))
# "full": no file may grow (a full disk); "readonly": no byte may be written at all.
resource.setrlimit(resource.RLIMIT_FSIZE, (wal if limit == "full" else 0, resource.RLIM_INFINITY))
errors = []
for step in range(10, 30):
    try:
        store.add_record(make_record(step))
    except StoreWriteError as exc:
        errors.append(str(exc))
try:
    store.close()
except StoreWriteError as exc:
    errors.append(str(exc))
print(json.dumps({"errors": errors, "lost": store.backlog().lost, "held": store.backlog().held}))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
@pytest.mark.parametrize("limit", ["full", "readonly"])
def test_a_full_or_read_only_disk_loses_no_committed_record_and_says_what_it_lost(
    tmp_path: Path, limit: str
) -> None:
    """A real refusal by the kernel: RLIMIT_FSIZE makes the writes that would grow a file (``full``) or
    any write (``readonly``; chmod would not do, as root writes anyway) fail with EFBIG."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_SCRIPT, str(run), limit],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["lost"] == {"record": 20} and report["held"] == {}
    errors = report["errors"]
    # Each refused write raises a call late (write_behind): 19 of them by add_record; close settles the
    # last with its final retry and reports the total.
    assert len(errors) == 19 + 1
    assert "disk I/O error" in errors[0] and "held for retry: 1 record; lost: none" in errors[0]
    assert "held for retry: 5 records; lost: 1 record" in errors[5]
    assert "closed without storing 20 records" in errors[-1] and "committed before is intact" in errors[-1]
    assert integrity(run / "run.db") == "ok"
    with RunStore(run, mode="r") as store:
        assert [row["step"] for row in store.records()] == list(range(10))
        assert_record(store.last_record(), make_record(9))


def test_a_store_dropped_without_close_does_not_keep_its_path_locked(tmp_path):
    """A notebook cell rerun drops the old store unclosed: the next writer must get the path."""
    import gc

    store = RunStore(tmp_path / "run", mode="w")
    del store
    gc.collect()
    with RunStore(tmp_path / "run", mode="a") as again:
        assert len(again) == 0


def test_tail_reads_the_last_records_oldest_first(tmp_path: Path) -> None:
    records = [make_record(step) for step in range(6)]
    with RunStore(tmp_path / "run", mode="w") as store:
        for record in records:
            store.add_record(record)
        assert store.tail(0) == []
        tail = store.tail(3)
        assert [row["step"] for row in tail] == [3, 4, 5]
        for row, record in zip(tail, records[3:], strict=True):
            assert_record(row, record)
        assert [row["step"] for row in store.tail(100)] == list(range(6))
        with pytest.raises(ValueError, match="n must be an int >= 0"):
            store.tail(-1)
        with pytest.raises(TypeError, match="n must be an int"):
            store.tail(2.5)  # type: ignore[arg-type]


def test_mark_finished_is_kept_until_the_run_is_written_again(tmp_path: Path) -> None:
    with RunStore(tmp_path / "run", mode="w", write_behind=True) as store:
        store.add_record(make_record(1))
        assert not store.closed
        store.mark_finished()
        assert store.meta()["finished_at"].endswith("+00:00")
    assert store.closed
    with RunStore(tmp_path / "run") as reader:
        assert "finished_at" in reader.meta() and len(reader) == 1
    with RunStore(tmp_path / "run", mode="a") as store:
        assert "finished_at" not in store.meta()
