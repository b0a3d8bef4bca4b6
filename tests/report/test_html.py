"""The HTML report's content, the static figures and the ``report`` command, on real monitored runs."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from spectral_edge import RunStore
from spectral_edge.cli.main import build_parser, main
from spectral_edge.report.data import load_runs, run_data_from_arrays
from spectral_edge.report.figures import write_static_figures
from spectral_edge.report.html import render_report, write_report
from tests.report.conftest import train_run

plotly_offline = pytest.importorskip(
    "plotly.offline", reason="the HTML report needs plotly (the report extra)"
)
PLOTLY_JS = plotly_offline.get_plotlyjs()
SECTIONS = ("overview", "sigma", "gap", "adiabatic", "alpha", "groups", "curves", "events", "config")


def page_data(text: str) -> str:
    """The page without the inlined plotly.js: what the report itself adds."""
    return text.replace(PLOTLY_JS, "")


def plot_divs(text: str) -> list[str]:
    return re.findall(r'<div id="(plot-\d+)" class="plotly-graph-div"', text)


@pytest.fixture(scope="module")
def overlay_page(two_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "report.html"
    write_report(two_runs, out, title="wd 1 vs wd 0")
    return out.read_text(encoding="utf-8")


def test_the_page_is_self_contained_with_plotly_inlined_once(overlay_page):
    assert overlay_page.count(PLOTLY_JS) == 1
    data = page_data(overlay_page)
    # Nothing is fetched: no external script, stylesheet, image or font.
    assert not re.search(r"<(script|link|img|iframe)[^>]*\b(src|href)=", data)
    # No CDN host or URL (a bare "cdn" can occur by chance inside the page's base64 array data).
    assert not re.search(r"cdn[.\w-]*\.(com|net|org|io)|//cdn", data.lower())
    assert "http://" not in data and "https://" not in data
    assert "<title>wd 1 vs wd 0</title>" in overlay_page


def test_every_section_and_plot_is_there(overlay_page, two_runs):
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in overlay_page
    # σ, R + k*, η𝒜, one α heat map per run, groups, training metrics, evaluations.
    assert len(plot_divs(overlay_page)) == 8
    data = page_data(overlay_page)
    for name in ("mlp-wd1", "mlp-wd0"):  # legends name the runs by directory
        assert f'"name":"{name}"' in data
    assert data.count('"zmin":0') == 2  # the α_j heat maps (the template names heatmap too)
    assert '"type":"log"' in data  # σ_j, R and η𝒜 on log axes
    assert "config: weight_decay" in data  # the overview lists the setting the runs differ in


def test_the_event_table_lists_every_event(overlay_page, two_runs):
    events = [e for path in two_runs for e in RunStore(path, mode="r").events()]
    table = re.search(r'<table id="event-table">(.*?)</table>', overlay_page, re.S)[1]
    assert table.count("<tr>") == len(events) + 1  # plus the header
    for event in events:
        assert f'<td class="num">{event.step:,}</td>' in table


def test_the_config_is_shown_as_json(overlay_page):
    assert "&quot;weight_decay&quot;: 1.0" in overlay_page and "&quot;weight_decay&quot;: 0.0" in overlay_page
    assert "&quot;n_params&quot;: 161" in overlay_page


def test_runs_without_lr_groups_or_evals_get_messages(tmp_path):
    bare = train_run(tmp_path / "bare", weight_decay=0.0, lr=False, groups=None, evals=False)
    text = render_report(load_runs([bare]))
    assert "No 𝒜 in <b>bare</b>" in text and "pass lr=optimizer" in text
    assert "no per-group spectra" in text
    assert "Evaluations (log_eval)" not in text and "Training metrics" in text
    assert len(plot_divs(text)) == 4  # σ, R + k*, α, training metrics
    assert "None (no 𝒜)" in text or "none (no 𝒜)" in text


def test_a_run_without_records_is_named_on_the_page(tmp_path, two_runs):
    with RunStore(tmp_path / "starting", mode="w") as store:
        store.write_config({"monitor": {"window": 10}})
    text = render_report(load_runs([two_runs[0], tmp_path / "starting"]))
    assert "starting has no records yet" in text
    assert "No records yet in <b>starting</b>" in text
    assert len(plot_divs(text)) == 7  # the other run's plots; one α heat map


def test_nothing_to_show_is_a_clear_error(tmp_path, capsys):
    with RunStore(tmp_path / "empty", mode="w") as store:
        store.write_config({})
    with pytest.raises(ValueError, match="nothing to report: no records and no evaluations yet"):
        render_report(load_runs([tmp_path / "empty"]))
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")]) == 2
    assert "spectral-edge report: error: nothing to report" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_a_run_with_only_evaluations_shows_its_curves(tmp_path):
    with RunStore(tmp_path / "evals-only", mode="w") as store:
        for step in (0, 50, 100):
            store.add_eval(step, {"acc": step / 100, "loss <1>": 1.0 / (step + 1)})
    text = render_report(load_runs([tmp_path / "evals-only"]))
    assert len(plot_divs(text)) == 1 and "Evaluations (log_eval)" in text
    assert "loss &lt;1&gt;" in text and "loss <1>" not in page_data(text)  # names are escaped
    assert "No records yet in <b>evals-only</b>" in text


def synthetic_arrays(n: int, w: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sigma = np.sort(rng.lognormal(-3, 1, size=(n, w)), axis=1)[:, ::-1]
    ratio = sigma[:, :-1] / sigma[:, 1:]
    arrays = {
        "step": np.arange(1, n + 1),
        "singular_values": sigma,
        "gap_ratio": ratio.max(axis=1),
        "k_star": ratio.argmax(axis=1) + 1,
        "alpha": rng.uniform(size=(n, w)),
        "adiabatic": rng.lognormal(3, 2, size=n),
        "lr": np.full(n, 1e-3),
        "metric.loss": rng.lognormal(size=n),
    }
    for g in ("embed", "blocks", "head"):
        arrays[f"group.{g}.k_star"] = rng.integers(1, w, size=n)
        arrays[f"group.{g}.gap_ratio"] = rng.uniform(1, 5, size=n)
    return arrays


def test_infinite_ratios_are_clipped_for_plotting_and_said():
    arrays = synthetic_arrays(500)
    arrays["gap_ratio"][[10, 20, 30]] = np.inf
    arrays["adiabatic"][[40, 41]] = np.inf
    arrays["singular_values"][[50], -1] = 0.0
    text = render_report([run_data_from_arrays("inf-run", "runs/inf-run", arrays)])
    assert "3 records have R = ∞" in text
    assert "2 records have η𝒜 = ∞" in text
    assert "1 values σ_j = 0" in text
    assert "Infinity" not in page_data(text)


def test_a_run_of_100k_records_is_thinned_and_the_page_stays_small():
    n = 100_000
    run = run_data_from_arrays("long", "runs/long", synthetic_arrays(n), max_points=4000)
    assert run.stride == 25 and len(run.steps) == 4000 + 1  # every 25th record and the last
    start = time.perf_counter()
    text = render_report([run])
    elapsed = time.perf_counter() - start
    data_mb = len(page_data(text).encode()) / 1e6
    assert data_mb < 1.5, f"the report's own data is {data_mb:.2f} MB"
    assert len(text.encode()) / 1e6 < len(PLOTLY_JS) / 1e6 + 1.5
    assert "4,001 of 100,000 records" in text
    assert elapsed < 20


def test_static_figures_are_written(two_runs, tmp_path):
    runs = load_runs(two_runs)
    paths = write_static_figures(runs, tmp_path / "fig", fmt="png")
    assert [p.name for p in paths] == [
        f"{name}.png" for name in ("sigma", "gap_ratio", "adiabatic", "alpha", "groups", "metrics", "evals")
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    with pytest.raises(ValueError, match="fmt must be one of png, svg, pdf"):
        write_static_figures(runs, tmp_path / "fig", fmt="jpg")


def test_report_command_writes_the_page_and_svg_figures(two_runs, tmp_path, capsys):
    out = tmp_path / "out" / "cmp.html"
    argv = [
        "report",
        *map(str, two_runs),
        "--out",
        str(out),
        "--title",
        "cmp",
        "--static",
        str(tmp_path / "svg"),
    ]
    assert main([*argv, "--format", "svg"]) == 0
    printed = capsys.readouterr().out
    assert f"{out} (" in printed and "2 runs" in printed
    assert "<title>cmp</title>" in out.read_text(encoding="utf-8")
    svgs = sorted(p.name for p in (tmp_path / "svg").iterdir())
    assert svgs == sorted(
        f"{n}.svg" for n in ("sigma", "gap_ratio", "adiabatic", "alpha", "groups", "metrics", "evals")
    )
    assert (tmp_path / "svg" / "sigma.svg").read_text().lstrip().startswith("<?xml")


def test_report_command_errors_for_missing_and_half_written_runs(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "spectral-edge report: error: no run directory" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "run.db").touch()
    assert main(["report", str(tmp_path / "half"), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "half-written" in err and "report: error" in err
    assert main(["report", str(tmp_path / "half"), "--max-points", "1"]) == 2
    assert "--max-points must be >= 2" in capsys.readouterr().err


def test_report_help_shows_examples(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["report", "--help"])
    out = capsys.readouterr().out
    assert "spectral-edge report runs/exp1" in out and "--static figures --format svg" in out
