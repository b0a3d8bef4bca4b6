"""Make docs/images/report.png: the HTML report of the two demo runs, screenshotted in headless Chromium.

Run from the repository root after ``make demo`` and ``spectral-edge demo --weight-decay 0``::

    .venv/bin/python docs/make_report_screenshot.py

It writes the report with ``spectral-edge report`` (into a temporary folder unless ``--html`` is given: the
page is ~7 MB and does not belong in git), opens it in Debian's Chromium through playwright, and saves a
full-page screenshot 1400 px wide. It fails if the page logs a console error.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ["runs/grokking-div-p97-wd1-seed42", "runs/grokking-div-p97-wd0-seed42"]  # relative to ROOT
TITLE = "Grokking a ÷ b mod 97: weight decay 1 vs 0 (seed 42)"
CHROMIUM = "/usr/bin/chromium"
# The machine running this may have no network: these flags keep Chromium from trying to reach one.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def screenshot(html: Path, png: Path, *, width: int = 1400) -> list[str]:
    """Load ``html`` in Chromium, wait for every plot, save a full-page PNG; return the console errors."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(html.resolve().as_uri(), wait_until="load")
            page.wait_for_function(
                "Array.from(document.querySelectorAll('.plotly-graph-div'))"
                ".every(d => d.querySelector('.main-svg'))",
                timeout=60_000,
            )
            page.wait_for_timeout(500)
            png.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(png), full_page=True)
        finally:
            browser.close()
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--html", type=Path, default=None, help="where to keep the HTML (default: not kept)")
    parser.add_argument("--png", type=Path, default=ROOT / "docs/images/report.png")
    args = parser.parse_args()
    args.png = args.png.resolve()
    args.html = args.html.resolve() if args.html else None
    from spectral_edge.cli.main import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        html = args.html or Path(tmp) / "report.html"
        os.chdir(ROOT)  # the page shows the run paths as given: keep them relative
        status = cli(["report", *RUNS, "--out", str(html), "--title", TITLE])
        if status:
            return status
        errors = screenshot(html, args.png)
    for e in errors:
        print("console error:", e, file=sys.stderr)
    print(args.png, f"{args.png.stat().st_size / 1e6:.2f} MB")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
