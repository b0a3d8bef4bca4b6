"""The HTML report: one self-contained page of interactive plots of one or several runs (needs plotly).

The page inlines plotly.js from the installed ``plotly`` package once, so it opens offline and needs no CDN.
Sections: overview, σ_j over time, gap ratio R with k* and the events, η𝒜 with its regimes, α_j heat
maps, per-group k*, training and evaluation curves, the event table and each run's config. Several runs
overlay in the same plots with one colour per run (heat maps: one per run).

What is plotted, and how (also stated on the page where it applies):

* Long runs are thinned for plotting by :func:`~spectral_edge.report.data.thin_indices`: above
  ``max_points`` records (default 4000) every k-th record is drawn, plus the last one and the records
  at and just before each event. Final values, counts and the smoothed η𝒜 use every record.
* R = +inf (a window whose rank ends at k*) and 𝒜 = +inf (a zero gap) cannot be drawn on a log axis:
  they are drawn at the top of the axis as × markers, and the page says how many there are.
* σ_j = 0 (rank-deficient windows) is left out of the log plot.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from spectral_edge._imports import require
from spectral_edge.report.data import DEFAULT_MAX_POINTS, RunData, load_runs
from spectral_edge.report.style import REGIME_COLORS, RUN_COLORS, RUN_DASHES, event_style, short_labels

__all__ = ["render_report", "write_report"]

_REGIME_TEXT = {"plateau": "#1b7a1b", "transition": "#9a7300", "forgetting": "#b22222"}  # darker, for labels

_OFFSET_NOTE = (
    " The runs' k* dots are offset vertically by up to ±0.18 so that runs at the same k* stay visible; "
    "hover shows the true value."
)
_PLOT_CONFIG = {
    "displaylogo": False,
    "responsive": True,
    "toImageButtonOptions": {"format": "svg", "scale": 1},
    "modeBarButtonsToRemove": ["select2d", "lasso2d"],
}
_FONT = "DejaVu Sans, Verdana, Arial, sans-serif"


def write_report(
    runs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] = "report.html",
    *,
    title: str | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
) -> Path:
    """Read runs from their run stores and write the self-contained HTML report.

    Args:
        runs: run directories (or their ``run.db``); each is named by its directory in the page.
        out: the HTML file to write (its folder is created).
        title: page title; default names the runs.
        max_points: records plotted per run before thinning (see the module docstring).

    Returns:
        The path written.

    Raises:
        RunStoreError: a run is missing, half-written or not a spectral-edge run.
        ValueError: no runs were given, or none of them has records or evaluations to show.
        MissingExtraError: plotly is not installed (the ``report`` extra).

    Example:
        >>> import tempfile, torch
        >>> from spectral_edge import SpectralMonitor
        >>> tmp = tempfile.TemporaryDirectory()
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with SpectralMonitor(model, window=3, lr=opt, store=f"{tmp.name}/run") as mon:
        ...     for _ in range(6):
        ...         opt.zero_grad(); model(torch.randn(4, 3)).pow(2).mean().backward(); opt.step()
        ...         _ = mon.step()
        >>> write_report([f"{tmp.name}/run"], f"{tmp.name}/report.html").stat().st_size > 1_000_000
        True
        >>> tmp.cleanup()
    """
    require("plotly", "the HTML report")
    data = load_runs(runs, max_points=max_points)
    text = render_report(data, title=title)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def render_report(runs: Sequence[RunData], *, title: str | None = None) -> str:
    """The report page for already loaded runs, as one HTML string.

    Raises:
        ValueError: ``runs`` is empty, or no run has records or evaluations.
    """
    plotly_offline = require("plotly.offline", "the HTML report")
    if not runs:
        raise ValueError("no runs given: pass at least one run directory")
    if not any(r.has_records or r.evals for r in runs):
        names = ", ".join(str(r.path) for r in runs)
        raise ValueError(
            f"nothing to report: no records and no evaluations yet in {names}. Records start once the "
            "monitor's window holds W updates; run training longer, or point at another run"
        )
    title = title or "spectral-edge report: " + " vs ".join(r.name for r in runs)
    colors = {r.name: RUN_COLORS[i % len(RUN_COLORS)] for i, r in enumerate(runs)}
    page = _Page(runs, colors)
    sections = [
        _section("overview", "Overview", _overview(runs, colors)),
        page.sigma(),
        page.gap_ratio(),
        page.adiabatic(),
        page.alpha(),
        page.groups(),
        page.curves(),
        _section("events", "Events", _event_table(runs, colors)),
        _section("config", "Configuration", _configs(runs)),
    ]
    nav = " · ".join(
        f'<a href="#{sid}">{html.escape(head)}</a>'
        for sid, head in _SECTION_HEADINGS.items()
        if sid in page.ids
    )
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from spectral_edge import __version__

    plotly_js = plotly_offline.get_plotlyjs()
    return _PAGE.format(
        title=html.escape(title),
        style=_STYLE,
        plotly_js=plotly_js,
        nav=nav,
        subtitle=html.escape(
            f"{len(runs)} run{'s' if len(runs) > 1 else ''} · generated {generated} · "
            f"spectral-edge {__version__}"
        ),
        body="\n".join(sections),
    )


# -- the page -------------------------------------------------------------------------------------------

_SECTION_HEADINGS = {
    "overview": "Overview",
    "sigma": "Singular values",
    "gap": "Gap ratio and k*",
    "adiabatic": "η𝒜 and regimes",
    "alpha": "α_j heat maps",
    "groups": "Per-group k*",
    "curves": "Training and evaluation",
    "events": "Events",
    "config": "Configuration",
}

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="spectral-edge">
<title>{title}</title>
<style>{style}</style>
<script type="text/javascript">window.PlotlyConfig = {{MathJaxConfig: "local"}};</script>
<script type="text/javascript">{plotly_js}</script>
</head>
<body>
<header><h1>{title}</h1><p class="sub">{subtitle}</p><nav>{nav}</nav></header>
<main>
{body}
</main>
</body>
</html>
"""

_STYLE = """
body { font-family: "DejaVu Sans", Verdana, Arial, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { background: #fff; border-bottom: 1px solid #ddd; padding: 14px 28px 10px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 0 0 6px; border-bottom: 1px solid #e4e4e4; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 12px 0 4px; }
.sub { color: #666; margin: 0 0 6px; font-size: 13px; }
nav { font-size: 13px; } nav a { color: #1f77b4; text-decoration: none; }
main { max-width: 1340px; margin: 0 auto; padding: 8px 20px 40px; }
section { background: #fff; border: 1px solid #e4e4e4; border-radius: 6px; margin: 14px 0; padding: 12px 16px; }
p.note { color: #444; font-size: 13px; margin: 2px 0 8px; line-height: 1.45; }
p.warn { background: #fff4e5; border-left: 4px solid #ff9800; padding: 6px 10px; font-size: 13px; margin: 6px 0; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border-bottom: 1px solid #eee; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 6px;
  vertical-align: -1px; }
.kind { display: inline-block; padding: 1px 7px; border-radius: 9px; color: #fff; font-size: 12px; white-space: nowrap; }
.scroll { max-height: 420px; overflow: auto; border: 1px solid #eee; }
pre { font-size: 12px; background: #f7f7f7; padding: 8px; max-height: 340px; overflow: auto; margin: 4px 0; }
details summary { cursor: pointer; font-weight: bold; font-size: 14px; margin: 6px 0; }
.plot { width: 100%; }
.configs { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 0 16px; }
"""


def _section(sid: str, heading: str, body: str) -> str:
    return f'<section id="{sid}">\n<h2>{html.escape(heading)}</h2>\n{body}\n</section>'


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def _warn(text: str) -> str:
    return f'<p class="warn">{text}</p>'


class _Page:
    """Builds the plot sections; each method returns one ``<section>`` (or a message when nothing to plot)."""

    def __init__(self, runs: Sequence[RunData], colors: Mapping[str, str]) -> None:
        self.go = require("plotly.graph_objects", "the HTML report")
        self.subplots = require("plotly.subplots", "the HTML report")
        self.pio = require("plotly.io", "the HTML report")
        self.runs = list(runs)
        self.with_records = [r for r in runs if r.has_records]
        self.colors = colors
        self.ids = {"overview", "events", "config"}
        self._n_plots = 0
        steps = [r.steps for r in runs if len(r.steps)] + [
            s for r in runs for s, _ in r.evals.values() if len(s)
        ]
        lo = min((int(s.min()) for s in steps), default=0)
        hi = max((int(s.max()) for s in steps), default=1)
        pad = max(0.01 * (hi - lo), 0.5)
        self.x_range = [lo - pad, hi + pad]  # every plot over steps shows the same stretch of training

    # -- helpers ---------------------------------------------------------------------------------------

    def _plot(self, fig: Any, height: int, *, titled: bool = False) -> str:
        """One plot div. Every plot gets the same margins and a legend on top, so that the plot areas of
        all sections line up over the same steps (the right margin holds band labels and colour bars)."""
        self._n_plots += 1
        fig.update_xaxes(range=self.x_range)
        top, bottom = (64, 50) if titled else (40, 50)
        # Above the plot area; above the first subplot's title when the subplots have titles.
        legend_y = 1.0 + (26 / max(height - top - bottom, 1) if titled else 0.0)
        fig.update_layout(
            template="plotly_white",
            height=height,
            font={"family": _FONT, "size": 12},
            margin={"l": 110, "r": 100, "t": top, "b": bottom},
            hoverlabel={"namelength": -1},
            legend={
                "font": {"size": 11},
                "itemsizing": "constant",
                "orientation": "h",
                "x": 0,
                "y": legend_y,
                "yanchor": "bottom",
            },
        )
        div = self.pio.to_html(
            fig,
            include_plotlyjs=False,
            full_html=False,
            config=_PLOT_CONFIG,
            div_id=f"plot-{self._n_plots}",
            default_width="100%",
            default_height=f"{height}px",
        )
        return f'<div class="plot">{div}</div>'

    def _missing_note(self, what: str) -> str:
        empty = [r.name for r in self.runs if not r.has_records]
        if not empty:
            return ""
        return _warn(f"No records yet in {_names(empty)}: {what} starts once the window holds W updates.")

    def _thinning_note(self) -> str:
        thinned = [r for r in self.with_records if r.stride > 1]
        if not thinned:
            return ""
        parts = [f"{html.escape(r.name)}: {len(r.steps):,} of {r.n_records:,} records" for r in thinned]
        return _note(
            "Long runs are thinned for plotting: every k-th record, plus the last one and the records at "
            "and just before each event (" + "; ".join(parts) + ")."
        )

    def _section(self, sid: str, body: str) -> str:
        self.ids.add(sid)
        return _section(sid, _SECTION_HEADINGS[sid], body)

    # -- σ_j ---------------------------------------------------------------------------------------------

    def sigma(self) -> str:
        go = self.go
        notes = [
            _note(
                "Singular values σ_1 ≥ … ≥ σ_W of the window X of the last W updates (log scale). A gap "
                "opening shows as σ_1 … σ_k* pulling away from the rest."
                + (
                    " One colour per run: σ_1 bold, σ_2 thinner, σ_3 … σ_W pale. Click a run in the legend "
                    "to hide it."
                    if len(self.with_records) > 1
                    else ""
                )
            )
        ]
        notes.append(self._missing_note("the spectrum"))
        if not self.with_records:
            return self._section("sigma", "".join(notes))
        fig = go.Figure()
        colorscale = require("plotly.colors", "the HTML report")
        single = len(self.with_records) == 1
        zeros = 0
        for run in self.with_records:
            w = run.sigma.shape[1]
            for j in range(w):
                y = run.sigma[:, j]
                zeros += int(np.sum(y <= 0))
                frac = j / max(w - 1, 1)
                color = (
                    colorscale.sample_colorscale("Viridis", [0.9 * frac])[0]
                    if single
                    else self.colors[run.name]
                )
                fig.add_trace(
                    go.Scatter(
                        x=run.steps,
                        y=_f32(np.where(y > 0, y, np.nan)),
                        mode="lines",
                        name=f"σ{j + 1}" if single else run.name,
                        legendgroup=None if single else run.name,  # grouped items stack vertically
                        showlegend=single or j == 0,
                        line={"color": color, "width": (1.8, 1.2)[j] if j < 2 else 0.8},
                        opacity=1.0 if single else (1.0, 0.75)[j] if j < 2 else 0.3,
                        hovertemplate=f"{_js(run.name)}<br>step %{{x}}<br>σ{j + 1} = %{{y:.4g}}<extra></extra>",
                    )
                )
        if zeros:
            notes.append(
                _note(f"{zeros:,} values σ_j = 0 (rank-deficient windows) are left out of the log plot.")
            )
        sigmas = np.concatenate([r.sigma.ravel() for r in self.with_records])
        fig.update_yaxes(type="log", title_text="σ_j", exponentformat="power", **_decade_ticks(sigmas))
        fig.update_xaxes(title_text="optimizer step")
        notes.append(self._thinning_note())
        return self._section("sigma", "".join(notes) + self._plot(fig, 460))

    # -- R and k* ---------------------------------------------------------------------------------------

    def gap_ratio(self) -> str:
        go = self.go
        first = self.with_records[0] if self.with_records else None
        thresholds = first.event_thresholds if first else None
        text = (
            "Top: the gap ratio R = σ_k*/σ_k*+1 at the spectral edge k* = argmax_j σ_j/σ_j+1 (log scale). "
            "R ≫ 1 is a strong gap, R → 1 a collapse."
        )
        if thresholds is not None:
            text += (
                f" Dotted lines: the event thresholds (an opening needs {thresholds.persistence} records with "
                f"R ≥ {thresholds.open_ratio:g}, a collapse {thresholds.persistence} records with "
                f"R &lt; {thresholds.collapse_ratio:g})."
            )
        text += (
            " Bottom: k*, one dot per record. Vertical lines mark the gap events and k* shifts (colour: kind; "
            "dash: run); hover a marker for its message. Regime changes are shown with η𝒜 below."
        )
        if len(self.with_records) > 1:
            text += _OFFSET_NOTE
        notes = [_note(text), self._missing_note("the gap ratio")]
        if not self.with_records:
            return self._section("gap", "".join(notes))
        fig = self.subplots.make_subplots(
            rows=2, cols=1, shared_xaxes=True, row_heights=[0.64, 0.36], vertical_spacing=0.05
        )
        finite = np.concatenate([r.gap_ratio[np.isfinite(r.gap_ratio)] for r in self.with_records])
        cap = float(finite.max()) * 1.5 if len(finite) else 10.0
        n_inf = 0
        for i, run in enumerate(self.with_records):
            color = self.colors[run.name]
            ratio, inf = _clip_inf(run.gap_ratio, cap)
            n_inf += int(inf.sum())
            fig.add_trace(
                go.Scatter(
                    x=run.steps,
                    y=_f32(ratio),
                    mode="lines",
                    name=run.name,
                    legendgroup=run.name,
                    line={"color": color, "width": 1.1},
                    hovertemplate=f"{_js(run.name)}<br>step %{{x}}<br>R = %{{y:.3g}}<extra></extra>",
                ),
                row=1,
                col=1,
            )
            if inf.any():
                fig.add_trace(
                    go.Scatter(
                        x=run.steps[inf],
                        y=np.full(int(inf.sum()), cap, dtype=np.float32),
                        mode="markers",
                        marker={"symbol": "x-thin", "size": 7, "line": {"width": 1.5, "color": color}},
                        name=f"R = ∞ ({run.name})",
                        legendgroup=run.name,
                        showlegend=False,
                        hovertemplate=f"{_js(run.name)}<br>step %{{x}}<br>R = ∞ (drawn at the top)<extra></extra>",
                    ),
                    row=1,
                    col=1,
                )
            fig.add_trace(
                self._k_dots(run, run.k_star, i, name=f"k* ({run.name})", hover="k* = %{customdata}"),
                row=2,
                col=1,
            )
            events = [e for e in run.events if e.kind != "regime_change"]
            self._event_lines(fig, run, i, events)
            y_at = _values_at(run, run.gap_ratio, [e.step for e in events], cap)
            self._event_markers(fig, run, events, y_at, row=1)
        if thresholds is not None:
            for value in (thresholds.open_ratio, thresholds.collapse_ratio):
                fig.add_hline(y=value, line={"color": "#888", "width": 1, "dash": "dot"}, row=1, col=1)
        if n_inf:
            notes.append(
                _note(
                    f"{n_inf:,} records have R = ∞ (the window's rank ends at k*); they are drawn as × at "
                    f"R = {cap:.3g}, the top of the axis."
                )
            )
        w = max(r.window for r in self.with_records)
        fig.update_yaxes(type="log", title_text="gap ratio R", row=1, col=1)
        fig.update_yaxes(
            title_text="k*", range=[0.5, max(w - 1, 1) + 0.5], row=2, col=1, dtick=1 if w <= 16 else None
        )
        fig.update_xaxes(title_text="optimizer step", row=2, col=1)
        notes.append(self._thinning_note())
        return self._section("gap", "".join(notes) + self._plot(fig, 560))

    def _k_dots(
        self,
        run: RunData,
        k: np.ndarray,
        index: int,
        *,
        name: str,
        hover: str,
        extra: np.ndarray | None = None,
        showlegend: bool = False,
    ) -> Any:
        """k* over time as small dots (a line would be a barcode: k* jumps often), runs offset vertically."""
        n = len(self.with_records)
        offset = 0.0 if n == 1 else 0.36 * (index / (n - 1) - 0.5)
        k = np.asarray(k, dtype=np.float64)
        custom = _small_ints(k) if extra is None else np.stack([_f32(k), extra], axis=1)
        return self.go.Scatter(
            x=run.steps,
            y=_f32(k + offset),
            customdata=custom,
            mode="markers",
            marker={"color": self.colors[run.name], "size": 3, "opacity": 0.45, "line": {"width": 0}},
            name=name,
            legendgroup=run.name,
            showlegend=showlegend,
            hovertemplate=f"{_js(run.name)}<br>step %{{x}}<br>{hover}<extra></extra>",
        )

    def _event_lines(self, fig: Any, run: RunData, index: int, events: Sequence[Any]) -> None:
        for event in events:
            _, color, _, _ = event_style(event.kind)
            fig.add_shape(
                type="line",
                xref="x",
                yref="paper",
                x0=event.step,
                x1=event.step,
                y0=0,
                y1=1,
                line={"color": color, "width": 1, "dash": RUN_DASHES[index % len(RUN_DASHES)]},
                opacity=0.55,
                layer="below",
            )

    def _event_markers(
        self, fig: Any, run: RunData, events: Sequence[Any], y_at: np.ndarray, *, row: int
    ) -> None:
        go = self.go
        shown = {t.legendgroup for t in fig.data if t.legendgroup and t.legendgroup.startswith("event:")}
        by_kind: dict[str, list[int]] = {}
        for i, event in enumerate(events):
            by_kind.setdefault(event.kind, []).append(i)
        for kind, idx in by_kind.items():
            label, color, symbol, _ = event_style(kind)
            fig.add_trace(
                go.Scatter(
                    x=[events[i].step for i in idx],
                    y=[float(y_at[i]) for i in idx],
                    mode="markers",
                    name=label,
                    legendgroup=f"event:{kind}",
                    showlegend=f"event:{kind}" not in shown,
                    marker={
                        "symbol": symbol,
                        "size": 11,
                        "color": color,
                        "line": {"color": self.colors[run.name], "width": 1.5},
                    },
                    text=[
                        f"{html.escape(run.name)}<br>step {events[i].step}: {html.escape(events[i].message or label)}"
                        for i in idx
                    ],
                    hovertemplate="%{text}<extra></extra>",
                ),
                row=row,
                col=1,
            )
            shown.add(f"event:{kind}")

    # -- η𝒜 --------------------------------------------------------------------------------------------

    def adiabatic(self) -> str:
        go = self.go
        with_a = [r for r in self.with_records if r.eta_adiabatic is not None]
        notes = []
        no_lr = [r.name for r in self.with_records if r.eta_adiabatic is None]
        if not with_a:
            notes.append(
                _warn(
                    f"No 𝒜 in {_names(no_lr) if no_lr else 'these runs'}: the monitor had no learning rate "
                    "(pass lr=optimizer to SpectralMonitor to get 𝒜 and its regimes)."
                )
                if self.with_records
                else self._missing_note("𝒜")
            )
            return self._section("adiabatic", "".join(notes))
        regimes = with_a[0].regimes
        smoothing = with_a[0].regime_smoothing
        scaled = regimes.scale == "lr"
        label = "η𝒜 = ‖ΔC‖_F / g²" if scaled else "𝒜 = ‖ΔC‖_F / (η g²)"
        short = "η𝒜" if scaled else "𝒜"
        notes.append(
            _note(
                f"The adiabatic parameter as the regime classifier reads it: {label} (log scale), the per-step "
                f"change of the window covariance against the squared gap. Faint: each record; bold: the "
                f"median of the last {smoothing} records, which the regime events read. Bands: "
                f"plateau ({short} &lt; {regimes.low:g}), transition, forgetting ({short} &gt; {regimes.high:g}). "
                "The strip below shows each run's regime as its regime-change events report it "
                "(the first regime is the one the first event leaves)."
            )
        )
        if no_lr:
            notes.append(_warn(f"No 𝒜 in {_names(no_lr)}: the monitor had no learning rate."))
        if any(
            (r.regimes.low, r.regimes.high, r.regimes.scale) != (regimes.low, regimes.high, regimes.scale)
            for r in with_a
        ):
            notes.append(
                _warn(
                    f"The runs use different regime cut-offs; the bands show those of {html.escape(with_a[0].name)}."
                )
            )
        notes.append(self._missing_note("𝒜"))

        values = np.concatenate([r.eta_adiabatic for r in with_a])
        finite = values[np.isfinite(values) & (values > 0)]
        lo = min(float(finite.min()) if len(finite) else regimes.low, regimes.low) / 2
        hi = max(float(finite.max()) if len(finite) else regimes.high, regimes.high) * 2
        fig = self.subplots.make_subplots(
            rows=2, cols=1, shared_xaxes=True, row_heights=[0.8, 0.2], vertical_spacing=0.06
        )
        for name, y0, y1 in (
            ("plateau", lo, regimes.low),
            ("transition", regimes.low, regimes.high),
            ("forgetting", regimes.high, hi),
        ):
            fig.add_shape(
                type="rect",
                xref="x domain",
                yref="y",
                x0=0,
                x1=1,
                y0=y0,
                y1=y1,
                fillcolor=REGIME_COLORS[name],
                opacity=0.09,
                line={"width": 0},
                layer="below",
            )
            fig.add_annotation(
                xref="x domain",
                yref="y",
                x=1.005,
                y=math.log10(math.sqrt(y0 * y1)),
                text=name,
                showarrow=False,
                xanchor="left",
                font={"color": _REGIME_TEXT[name], "size": 12},
            )
        n_inf = 0
        for i, run in enumerate(with_a):
            color = self.colors[run.name]
            eta, eta_median = run.eta_adiabatic, run.eta_adiabatic_median
            if eta is None or eta_median is None:  # with_a holds only runs that have both
                continue
            raw, inf = _clip_inf(eta, hi)
            n_inf += int(inf.sum())
            raw = np.where(raw > 0, raw, np.nan)
            fig.add_trace(
                go.Scatter(
                    x=run.steps,
                    y=_f32(raw),
                    mode="lines",
                    line={"color": color, "width": 0.6},
                    opacity=0.22,
                    name=f"{run.name} (per record)",
                    legendgroup=run.name,
                    showlegend=False,
                    hovertemplate=f"{_js(run.name)}<br>step %{{x}}<br>{short} = %{{y:.3g}}<extra></extra>",
                ),
                row=1,
                col=1,
            )
            med, _ = _clip_inf(eta_median, hi)
            fig.add_trace(
                go.Scatter(
                    x=run.steps,
                    y=_f32(np.where(med > 0, med, np.nan)),
                    mode="lines",
                    line={"color": color, "width": 2.0},
                    name=run.name,
                    legendgroup=run.name,
                    hovertemplate=f"{_js(run.name)}<br>step %{{x}}<br>median {short} = %{{y:.3g}}<extra></extra>",
                ),
                row=1,
                col=1,
            )
            spans = run.regime_spans()
            if not spans:
                fig.add_annotation(
                    xref="x2 domain",
                    yref="y2",
                    x=0.5,
                    y=i,
                    text="no regime change reported",
                    showarrow=False,
                    font={"size": 11, "color": "#777"},
                )
            for start, end, regime in spans:
                fig.add_shape(
                    type="rect",
                    xref="x2",
                    yref="y2",
                    x0=start,
                    x1=end,
                    y0=i - 0.38,
                    y1=i + 0.38,
                    fillcolor=REGIME_COLORS[regime],
                    opacity=0.75,
                    line={"width": 0},
                )
            # Invisible points give the strip its hover text (shapes have none), one per regime stretch; a run
            # without regime events still gets one, so the strip's axis always exists.
            fig.add_trace(
                go.Scatter(
                    x=[(a + b) / 2 for a, b, _ in spans] or [run.first_step],
                    y=[i] * max(len(spans), 1),
                    text=[f"{html.escape(run.name)}<br>{r} from step {a:,} to {b:,}" for a, b, r in spans]
                    or [f"{html.escape(run.name)}: no regime events"],
                    mode="markers",
                    marker={"size": 10, "color": "rgba(0,0,0,0)"},
                    showlegend=False,
                    hovertemplate="%{text}<extra></extra>",
                ),
                row=2,
                col=1,
            )
        if n_inf:
            notes.append(
                _note(
                    f"{n_inf:,} records have {short} = ∞ (a zero gap); they are drawn at the top of the axis."
                )
            )
        fig.update_yaxes(
            type="log",
            range=[math.log10(lo), math.log10(hi)],
            title_text=short,
            exponentformat="power",
            **_decade_ticks(np.array([lo, hi])),
            row=1,
            col=1,
        )
        fig.update_yaxes(
            tickvals=list(range(len(with_a))),
            ticktext=short_labels([r.name for r in with_a]),
            range=[len(with_a) - 0.5, -0.5],
            showgrid=False,
            zeroline=False,
            title_text="regime",
            row=2,
            col=1,
        )
        fig.update_xaxes(title_text="optimizer step", row=2, col=1)
        notes.append(self._thinning_note())
        return self._section("adiabatic", "".join(notes) + self._plot(fig, 520 + 22 * len(with_a)))

    # -- α_j --------------------------------------------------------------------------------------------

    def alpha(self) -> str:
        go = self.go
        notes = [
            _note(
                "Stability coefficients α_j = max(0, 1 − ‖ΔC‖_F²/δ_j²) of each direction j (Def 16.1), one heat "
                "map per run: near 1 the direction is stable from one window to the next, 0 means the "
                "perturbation bound says nothing (δ_j, the gap around λ_j, is smaller than ‖ΔC‖_F)."
            ),
            self._missing_note("α_j"),
        ]
        plots = []
        for run in self.with_records:
            w = run.alpha.shape[1]
            fig = go.Figure(
                go.Heatmap(
                    x=run.steps,
                    y=np.arange(1, w + 1),
                    z=_f32(run.alpha.T),
                    zmin=0,
                    zmax=1,
                    colorscale="Viridis",
                    colorbar={
                        "title": {"text": "α_j", "side": "right"},
                        "thickness": 12,
                        "x": 1.01,
                        "xanchor": "left",
                    },
                    hovertemplate="step %{x}<br>j = %{y}<br>α = %{z:.3f}<extra></extra>",
                )
            )
            fig.update_layout(
                title={
                    "text": html.escape(run.name),
                    "font": {"size": 13, "color": self.colors[run.name]},
                    "x": 0,
                    "xref": "paper",
                }
            )
            fig.update_yaxes(title_text="j", autorange="reversed", dtick=1 if w <= 16 else None)
            fig.update_xaxes(title_text="optimizer step")
            plots.append(self._plot(fig, 150 + 14 * w))
        notes.append(self._thinning_note())
        return self._section("alpha", "".join(notes) + "".join(plots))

    # -- groups -----------------------------------------------------------------------------------------

    def groups(self) -> str:
        names: list[str] = []
        for run in self.with_records:
            names += [g for g in run.groups if g not in names]
        notes = [
            _note(
                "k* of each parameter group's own Gram matrix (the group Grams sum to the whole model's). "
                "One dot per record; hover for the group's gap ratio R."
                + (" One colour per run." + _OFFSET_NOTE if len(self.with_records) > 1 else "")
            ),
            self._missing_note("per-group k*"),
        ]
        if not names:
            if self.with_records:
                # A record has per-group spectra only when the monitor split the parameters into two or
                # more groups; one group is the whole model, already shown above.
                notes.append(
                    _warn(
                        "These runs have no per-group spectra: the monitor put all parameters in one "
                        "group, whose spectrum is the whole model's (shown above). Pass groups= (say "
                        "groups=2, or a mapping of name prefixes) to split them."
                    )
                )
            return self._section("groups", "".join(notes))
        sizes = {}
        for run in self.with_records:
            saved = run.monitor_config.get("groups")
            if isinstance(saved, Mapping):
                sizes.update({k: v for k, v in saved.items() if isinstance(v, int)})
        titles = [f"{g}  (P = {sizes[g]:,})" if g in sizes else g for g in names]
        height = 90 + 120 * len(names)
        fig = self.subplots.make_subplots(
            rows=len(names),
            cols=1,
            shared_xaxes=True,
            subplot_titles=[html.escape(t) for t in titles],
            vertical_spacing=min(45 / height, 0.5 / len(names)),  # room for each row's title
        )
        for index, run in enumerate(self.with_records):
            for row, group in enumerate(names, start=1):
                if group not in run.groups:
                    continue
                k, ratio = run.groups[group]
                ratio = _f32(np.where(np.isfinite(ratio), ratio, np.nan))
                fig.add_trace(
                    self._k_dots(
                        run,
                        k,
                        index,
                        name=run.name,
                        hover=f"{_js(group)}: k* = %{{customdata[0]}}, R = %{{customdata[1]:.3g}}",
                        extra=ratio,
                        showlegend=row == 1,
                    ),
                    row=row,
                    col=1,
                )
        w = max(r.window for r in self.with_records)
        fig.update_yaxes(range=[0.5, max(w - 1, 1) + 0.5], title_text="k*", dtick=2 if w > 6 else 1)
        fig.update_xaxes(title_text="optimizer step", row=len(names), col=1)
        fig.update_annotations(font={"size": 12})
        notes.append(self._thinning_note())
        return self._section("groups", "".join(notes) + self._plot(fig, height, titled=True))

    # -- training and evaluation ------------------------------------------------------------------------

    def curves(self) -> str:
        metric_names: list[str] = []
        eval_names: list[str] = []
        for run in self.runs:
            metric_names += [m for m in run.metrics if m not in metric_names]
            eval_names += [m for m in run.evals if m not in eval_names]
        parts = []
        if metric_names:
            parts.append("<h3>Training metrics (logged with each record)</h3>")
            series = {
                m: [(r, r.steps, r.metrics[m]) for r in self.with_records if m in r.metrics]
                for m in metric_names
            }
            parts.append(self._grid(series))
        if eval_names:
            parts.append("<h3>Evaluations (log_eval)</h3>")
            series = {
                m: [(r, r.evals[m][0], r.evals[m][1]) for r in self.runs if m in r.evals] for m in eval_names
            }
            parts.append(self._grid(series, markers=True))
        if not parts:
            return self._section(
                "curves",
                _note(
                    "These runs logged no training metrics and no evaluations (pass them to "
                    "monitor.step(loss=...) and monitor.log_eval(step, ...))."
                ),
            )
        without = [r.name for r in self.runs if not r.evals]
        note = _note(
            "Metrics passed to monitor.step() are plotted per record (thinned like the spectra); evaluations "
            "as logged. A log scale is used where a curve is positive and spans more than two decades "
            "(never for names containing 'acc')."
        )
        if eval_names and without:
            note += _note(f"No evaluations in {_names(without)}.")
        return self._section("curves", note + "".join(parts))

    def _grid(
        self, series: Mapping[str, list[tuple[RunData, np.ndarray, np.ndarray]]], *, markers: bool = False
    ) -> str:
        go = self.go
        names = list(series)
        cols = 1 if len(names) == 1 else 2
        rows = math.ceil(len(names) / cols)
        height = 84 + 230 * rows
        fig = self.subplots.make_subplots(
            rows=rows,
            cols=cols,
            subplot_titles=[html.escape(n) for n in names],
            vertical_spacing=min(0.5 / rows, 70 / (height - 114)),  # room for the x ticks and the next title
            horizontal_spacing=0.08,
        )
        legend_shown: set[str] = set()
        for i, name in enumerate(names):
            row, col = i // cols + 1, i % cols + 1
            values_all = []
            for run, steps, values in series[name]:
                values = np.asarray(values, dtype=np.float64)
                values_all.append(values[np.isfinite(values)])
                fig.add_trace(
                    go.Scatter(
                        x=np.asarray(steps),
                        y=_f32(np.where(np.isfinite(values), values, np.nan)),
                        mode="lines+markers" if markers and len(values) <= 400 else "lines",
                        marker={"size": 3},
                        line={"color": self.colors[run.name], "width": 1.2},
                        name=run.name,
                        legendgroup=run.name,
                        showlegend=run.name not in legend_shown,
                        hovertemplate=f"{_js(run.name)}<br>step %{{x}}<br>{_js(name)} = %{{y:.4g}}<extra></extra>",
                    ),
                    row=row,
                    col=col,
                )
                legend_shown.add(run.name)
            finite = np.concatenate(values_all) if values_all else np.zeros(0)
            if _log_scale(name, finite):
                fig.update_yaxes(
                    type="log", exponentformat="power", row=row, col=col, **_decade_ticks(finite)
                )
            fig.update_xaxes(title_text="optimizer step" if row == rows else None, row=row, col=col)
        fig.update_annotations(font={"size": 12})
        return self._plot(fig, height, titled=True)


# -- tables ---------------------------------------------------------------------------------------------


def _overview(runs: Sequence[RunData], colors: Mapping[str, str]) -> str:
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, cells: list[str]) -> None:
        rows.append((label, cells))

    row("path", [f"<code>{html.escape(str(r.path))}</code>" for r in runs])
    row("created", [html.escape(str(r.meta.get("created", "?"))) for r in runs])
    row(
        "records",
        [
            f"{r.n_records:,} (steps {r.first_step:,}–{int(r.last.get('step', 0)):,})"
            if r.has_records
            else "<b>no records yet</b>"
            for r in runs
        ],
    )
    row("window W · P", [f"{r.window} · {r.n_params:,}" if r.n_params else f"{r.window} · ?" for r in runs])
    row("interval", [html.escape(str(r.monitor_config.get("interval", "?"))) for r in runs])
    row("learning rate η", [_lr_text(r) for r in runs])
    row("groups", [html.escape(", ".join(r.groups)) or "—" for r in runs])
    row("events", [_event_counts(r) for r in runs])
    row(
        "last record: gap",
        [
            f"k* = {r.last.get('k_star')}, R = {_num(r.last.get('gap_ratio'))}" if r.has_records else "—"
            for r in runs
        ],
    )
    row("regime at the end", [_final_regime(r) for r in runs])
    metric_names: list[str] = []
    for r in runs:
        metric_names += [m for m in (r.last.get("metrics") or {}) if m not in metric_names]
    for m in metric_names:
        row(f"last record: {m}", [_num((r.last.get("metrics") or {}).get(m)) for r in runs])
    eval_names: list[str] = []
    for r in runs:
        eval_names += [m for m in r.evals if m not in eval_names]
    for m in eval_names:
        row(
            f"last eval {m}",
            [
                f"{_num(r.evals[m][1][-1])} <span class='sub'>(step {int(r.evals[m][0][-1]):,})</span>"
                if m in r.evals and len(r.evals[m][0])
                else "—"
                for r in runs
            ],
        )
    flat = [
        _flatten(r.config.get("user", {}) if isinstance(r.config.get("user"), Mapping) else {}) for r in runs
    ]
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    if len(runs) > 1:
        differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
        for k in differing:
            row(f"config: {k}", [html.escape(_value_text(f.get(k))) for f in flat])
        same = len(keys) - len(differing)
    else:
        for k in keys[:40]:
            row(f"config: {k}", [html.escape(_value_text(flat[0].get(k)))])
    head = "".join(
        f'<th><span class="swatch" style="background:{colors[r.name]}"></span>{html.escape(r.name)}</th>'
        for r in runs
    )
    body = "".join(
        f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        for label, cells in rows
    )
    warnings = "".join(
        _warn(
            f"{html.escape(r.name)} has no records yet: the monitor writes one per step once its window holds W updates."
        )
        for r in runs
        if not r.has_records
    )
    table = f'<table id="overview-table"><tr><th></th>{head}</tr>{body}</table>'
    if len(runs) > 1:
        table += _note(
            f"Config rows list the user settings that differ between the runs; {same} more are the same in "
            "every run (see Configuration)."
        )
    return warnings + table


def _event_table(runs: Sequence[RunData], colors: Mapping[str, str]) -> str:
    rows = []
    for r in runs:
        for e in r.events:
            label, color, _, _ = event_style(e.kind)
            if e.k_before is None:  # regime changes carry only the k* at the time
                k = "" if e.k_after is None else _opt(e.k_after)
            else:
                k = f"{_opt(e.k_before)} → {_opt(e.k_after)}"
            value = (
                ""
                if e.ratio_before is None and e.ratio_after is None
                else f"{_num(e.ratio_before)} → {_num(e.ratio_after)}"
            )
            rows.append(
                f'<tr><td><span class="swatch" style="background:{colors[r.name]}"></span>{html.escape(r.name)}</td>'
                f'<td class="num">{e.step:,}</td><td><span class="kind" style="background:{color}">{html.escape(label)}</span></td>'
                f'<td class="num">{k}</td><td class="num">{value}</td><td>{html.escape(e.message)}</td></tr>'
            )
    if not rows:
        return _note("No events were detected in these runs.")
    note = _note(
        f"{len(rows)} events. The values are gap ratios R before → after, except for regime changes, "
        "where they are the median η𝒜 when the previous regime was entered → now."
    )
    return (
        note
        + '<div class="scroll"><table id="event-table"><tr><th>run</th><th>step</th><th>event</th><th>k*</th>'
        + "<th>value</th><th>message</th></tr>"
        + "".join(rows)
        + "</table></div>"
    )


def _configs(runs: Sequence[RunData]) -> str:
    parts = []
    for r in runs:
        text = json.dumps({"config": r.config, "meta": r.meta}, indent=2, default=str, allow_nan=True)
        parts.append(
            f"<details open><summary>{html.escape(r.name)}</summary><pre>{html.escape(text)}</pre></details>"
        )
    parts = ['<div class="configs">', *parts, "</div>"]
    return _note(
        "Each run's stored configuration (monitor settings and the user's own) and its library versions."
    ) + "".join(parts)


# -- small helpers --------------------------------------------------------------------------------------


def _f32(values: np.ndarray) -> np.ndarray:
    """Plotted values as float32 (half the page size; plenty for a plot), never ±inf (plotly cannot draw it)."""
    out = np.asarray(values, dtype=np.float32)
    return np.where(np.isinf(out), np.float32(np.nan), out)


def _decade_ticks(values: np.ndarray) -> dict[str, Any]:
    """Log-axis ticks at powers of ten only, when the values span more than two decades (else plotly's)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    if len(v) and math.log10(v.max() / v.min()) > 2:
        return {"dtick": 1}
    return {}


def _log_scale(name: str, values: np.ndarray) -> bool:
    """Log y for positive curves spanning over two decades (losses), never for accuracies."""
    if "acc" in name.lower() or not len(values):
        return False
    return bool(values.min() > 0 and values.max() / values.min() > 100)


def _small_ints(values: np.ndarray) -> np.ndarray:
    """k* values as int8 (a quarter of float32 on the page) when they are all whole and small; else float32."""
    values = np.asarray(values, dtype=np.float64)
    if np.all(np.isfinite(values)) and np.all(np.abs(values) < 127) and np.all(values == np.round(values)):
        return values.astype(np.int8)
    return _f32(values)


def _clip_inf(values: np.ndarray, cap: float) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64)
    inf = np.isposinf(values)
    return np.where(inf, cap, np.minimum(values, cap)), inf


def _values_at(run: RunData, values: np.ndarray, steps: Sequence[int], cap: float) -> np.ndarray:
    """``values`` at the plotted record at or just after each step (the thinning keeps those records)."""
    if not len(run.steps):
        return np.zeros(len(steps))
    idx = np.clip(np.searchsorted(run.steps, steps), 0, len(run.steps) - 1)
    out = np.asarray(values, dtype=np.float64)[idx]
    return np.where(np.isfinite(out), out, cap)


def _js(text: str) -> str:
    """A run or metric name inside a plotly hover template, which renders its own small HTML subset."""
    return html.escape(text)


def _names(names: Sequence[str]) -> str:
    return ", ".join(f"<b>{html.escape(n)}</b>" for n in names)


def _num(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return f"{value:.4g}"
    return html.escape(str(value))


def _opt(value: Any) -> str:
    return "?" if value is None else html.escape(str(value))


def _final_regime(run: RunData) -> str:
    """The regime the events left the run in; else the last record's own (noisy, unsmoothed) regime."""
    spans = run.regime_spans()
    if spans:
        return f"{spans[-1][2]} <span class='sub'>(from the regime events)</span>"
    regime = run.last.get("regime")
    if not regime:
        return "—"
    return f"{html.escape(str(regime))} <span class='sub'>(last record, unsmoothed; no regime event)</span>"


def _lr_text(run: RunData) -> str:
    if run.lr is None:
        return "none (no 𝒜)" if run.has_records else "—"
    finite = run.lr[np.isfinite(run.lr)]
    if not len(finite):
        return "—"
    lo, hi = float(finite.min()), float(finite.max())
    return f"{lo:.3g}" if lo == hi else f"{lo:.3g} – {hi:.3g} (last {_num(run.last.get('lr'))})"


def _event_counts(run: RunData) -> str:
    counts: dict[str, int] = {}
    for e in run.events:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    if not counts:
        return "none"
    return ", ".join(f"{n} {event_style(k)[0]}" for k, n in counts.items())


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in value.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return "—" if value is None else str(value)
