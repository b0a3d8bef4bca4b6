"""The HTML report in a real headless Chromium: it loads offline with no console errors, every plot draws.

Uses Debian's Chromium through playwright. ``make test`` does not install system packages: without
Chromium this test skips and names the command that installs it (``make browser``), except where
``SPECTRAL_EDGE_REQUIRE_BROWSER=1`` (CI sets it in ``.ci/run``), where a missing browser is a failure. The full-page screenshot is kept
as ``test-artifacts/report.png`` for a person to look at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from spectral_edge import RunStore
from spectral_edge.report.html import write_report

CHROMIUM = Path("/usr/bin/chromium")
# The test machine has no network; these flags keep Chromium from trying to reach one.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

if not CHROMIUM.exists():
    _missing = f"{CHROMIUM} is missing: run `make browser` (sudo apt-get install chromium) to run this test"
    if os.environ.get("SPECTRAL_EDGE_REQUIRE_BROWSER") == "1":
        raise RuntimeError(_missing)
    pytest.skip(_missing, allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing (the test extra)")
pytest.importorskip("plotly", reason="the HTML report needs plotly (the report extra)")

# What each plot drew, measured in the page: the SVG of plotly's main layer, its traces' drawn elements
# with a non-zero bounding box, and heat map images.
MEASURE_PLOTS = """
() => Array.from(document.querySelectorAll('.plotly-graph-div')).map(div => {
  const box = div.getBoundingClientRect();
  const sized = el => { const b = el.getBBox(); return b.width > 0 || b.height > 0; };
  const lines = Array.from(div.querySelectorAll('.scatterlayer .trace path.js-line'))
    .filter(p => (p.getAttribute('d') || '').length > 10 && sized(p));
  const points = Array.from(div.querySelectorAll('.scatterlayer .trace path.point')).filter(sized);
  const images = Array.from(div.querySelectorAll('.heatmaplayer image'))
    .filter(im => (im.getAttribute('href') || im.getAttribute('xlink:href') || '').startsWith('data:image/png')
                  && im.getBBox().width > 0);
  return {id: div.id, width: box.width, height: box.height, svg: div.querySelectorAll('.main-svg').length,
          traces: (div.data || []).length, heatmap: (div.data || []).some(t => t.type === 'heatmap'),
          lines: lines.length, points: points.length, images: images.length};
})
"""


def test_report_renders_in_chromium_without_errors(two_runs, tmp_path):
    page_path = write_report(two_runs, tmp_path / "report.html", title="spectral-edge report: wd 1 vs wd 0")
    errors: list[str] = []
    outside: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on(
                "console",
                lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on(
                "request",
                lambda r: None if r.url.startswith(("file:", "data:", "blob:")) else outside.append(r.url),
            )
            page.goto(page_path.as_uri(), wait_until="load")
            page.wait_for_function(
                "() => { const d = document.querySelectorAll('.plotly-graph-div');"
                " return d.length > 0 && Array.from(d).every(x => x.querySelector('.main-svg')); }",
                timeout=60_000,
            )
            page.wait_for_timeout(300)  # heat map images are set just after the SVG
            plots = page.evaluate(MEASURE_PLOTS)
            rows = page.locator("#event-table tr").count()
            ARTIFACTS.mkdir(exist_ok=True)
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    shutil.copyfile(shot, ARTIFACTS / "report.png")

    assert not errors, "\n".join(errors)
    assert not outside, f"the page tried to fetch {outside}: it must work offline"
    assert len(plots) == 8, plots  # σ, R + k*, η𝒜, two α heat maps, groups, training metrics, evaluations
    for plot in plots:
        assert plot["svg"] >= 1 and plot["width"] > 600 and plot["height"] > 150, plot
        assert plot["traces"] >= 1, plot
        if plot["heatmap"]:
            assert plot["images"] >= 1, f"heat map {plot['id']} drew no image: {plot}"
        else:
            assert plot["lines"] + plot["points"] >= 2, f"plot {plot['id']} drew nothing: {plot}"
    n_events = 0
    for path in two_runs:
        with RunStore(path, mode="r") as store:
            n_events += len(store.events())
    assert rows == n_events + 1  # the event table, header included
    assert (ARTIFACTS / "report.png").stat().st_size > 50_000
