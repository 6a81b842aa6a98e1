"""Plotly figures of a report. Pure: plain records in, `go.Figure` out.

Every string that reaches a figure (titles, legend names, categories, hover text) goes through `text()`: plotly
renders its text as a subset of HTML, so device models and campaign strings are escaped like any HTML we write.
Strings never go into a hovertemplate itself (where `%{...}` would be interpolated): only into `name`, categories or
`customdata`, and the templates are constants of this module.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"  # local fonts only
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star", "cross", "triangle-down")
HEIGHT = 420


def text(s: object) -> str:
    """Escape for plotly's pseudo-HTML. Quotes stay as they are: plotly decodes only a few named entities."""
    return html.escape("" if s is None else str(s), quote=False)


def _layout(title: str, **kw: Any) -> dict[str, Any]:
    """Compact layout: an empty template (the default one adds ~10 kB per figure) and local fonts."""
    base = dict(
        template=go.layout.Template(),
        title=dict(text=title, x=0.01, font=dict(size=15)),
        font=dict(family=FONT, size=12, color="#222"),
        colorway=list(COLORS),
        height=HEIGHT,
        paper_bgcolor="white",
        plot_bgcolor="white",
        margin=dict(l=60, r=20, t=60, b=60),
        hoverlabel=dict(font=dict(family=FONT)),
        legend=dict(orientation="v"),
    )
    base.update(kw)
    return base


def _axis(title: str, **kw: Any) -> dict[str, Any]:
    return dict(
        title=dict(text=title),
        gridcolor="#e5e5e5",
        zerolinecolor="#bbb",
        linecolor="#999",
        showline=True,
        automargin=True,
        **kw,
    )


def _category(group: tuple[str, str]) -> str:
    """Two-level category as one tick label on two lines (multicategory axes truncate long labels)."""
    return "<br>".join(text(g) for g in group if g)


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


# ---------------------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Bar:
    """One bar: `group` is the x category (two levels), `series` the legend entry."""

    group: tuple[str, str]
    series: str
    value: float
    low: float = float("nan")
    high: float = float("nan")
    claim: bool = True  # False: the difference did not pass the test / minimum ratio (drawn faded)
    hover: str = ""
    mark: str = ""  # written above the bar: the significance mark ("*", "n.s.")


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    series: str  # colour (legend)
    shape: str  # symbol (a second, smaller legend)
    link: str = ""  # points with the same link are joined by a thin line
    hover: str = ""


@dataclass(frozen=True)
class SweepPoint:
    """One cell of a sweep: `x` the swept value (a pinned frequency), `y` with its CI; points of a series are joined
    in x order."""

    series: str
    x: float
    y: float
    low: float = float("nan")
    high: float = float("nan")
    hover: str = ""


@dataclass(frozen=True)
class Series:
    name: str
    x: np.ndarray
    y: np.ndarray
    warmup: np.ndarray  # bool per point
    hover: str = ""


@dataclass(frozen=True)
class Segment:
    """A value at a cell's start and end (temperature, frequency)."""

    series: str
    x0: object
    x1: object
    y0: float
    y1: float
    hover: str = ""


# ---------------------------------------------------------------------------------------------------------- figures
def _mark_trace(x: list[str], rows: Sequence[Bar | None], group: str, legendgroup: str) -> go.Scatter | None:
    """The bars' marks ("*", "n.s.") as text just above each bar's error bar, in the bars' offset group (the
    layout's scattermode="group" lines them up); None when no bar has one."""
    if not any(r and r.mark for r in rows):
        return None
    top = [
        (r.high if math.isfinite(r.high) and r.high > r.value else r.value) if r and r.mark else float("nan")
        for r in rows
    ]
    return go.Scatter(
        x=x,
        y=top,
        text=[text(r.mark) if r else "" for r in rows],
        mode="text",
        textposition="top center",
        textfont=dict(size=12, color="#222"),
        offsetgroup=group,
        legendgroup=legendgroup,
        showlegend=False,
        hoverinfo="skip",
        cliponaxis=False,
    )


def bar_figure(
    title: str,
    bars: Sequence[Bar],
    *,
    y_title: str,
    reference: float | None = 1.0,
    x_title: str = "",
    log: bool = False,
) -> go.Figure:
    """Grouped bars over two-level categories with asymmetric CI error bars; a line at `reference`. `log`: a log
    value axis (ratios spanning orders of magnitude)."""
    groups = list(dict.fromkeys(b.group for b in bars))
    fig = go.Figure(
        layout=_layout(
            text(title),
            barmode="group",
            scattermode="group",
            yaxis=_axis(text(y_title), type="log" if log else "linear"),
            xaxis=_axis(text(x_title), type="category"),
        )
    )
    for i, series in enumerate(dict.fromkeys(b.series for b in bars)):
        by_group = {b.group: b for b in bars if b.series == series}
        rows = [by_group.get(g) for g in groups]
        y = [_nan(r.value) if r else float("nan") for r in rows]
        lo = [max(0.0, r.value - r.low) if r and math.isfinite(r.low) else 0.0 for r in rows]
        hi = [max(0.0, r.high - r.value) if r and math.isfinite(r.high) else 0.0 for r in rows]
        x = [_category(g) for g in groups]
        fig.add_trace(
            go.Bar(
                name=text(series),
                legendgroup=text(series),
                offsetgroup=str(i),
                x=x,
                y=y,
                marker=dict(
                    color=COLORS[i % len(COLORS)],
                    opacity=[1.0 if r is None or r.claim else 0.4 for r in rows],
                    pattern=dict(shape=["" if r is None or r.claim else "/" for r in rows]),
                ),
                error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo, thickness=1.2, width=3),
                customdata=[text(r.hover) if r else "" for r in rows],
                hovertemplate="%{customdata}<extra></extra>",
            )
        )
        marks = _mark_trace(x, rows, str(i), text(series))
        if marks is not None:
            fig.add_trace(marks)
    if reference is not None:
        fig.add_hline(y=reference, line=dict(color="#555", width=1, dash="dash"))
    return fig


def energy_figure(title: str, energy: list[Bar], power: list[Bar], *, baseline: str) -> go.Figure:
    """Two panels: energy per step and mean power, each relative to the baseline governor."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=(text(f"energy per step / {baseline}"), text(f"mean power / {baseline}"))
    )
    fig.update_layout(_layout(text(title), barmode="group", scattermode="group"))
    for col, bars in ((1, energy), (2, power)):
        groups = list(dict.fromkeys(b.group for b in bars))
        for i, series in enumerate(dict.fromkeys(b.series for b in energy + power)):
            by_group = {b.group: b for b in bars if b.series == series}
            rows = [by_group.get(g) for g in groups]
            lo = [max(0.0, r.value - r.low) if r and math.isfinite(r.low) else 0.0 for r in rows]
            hi = [max(0.0, r.high - r.value) if r and math.isfinite(r.high) else 0.0 for r in rows]
            x = [_category(g) for g in groups]
            fig.add_trace(
                go.Bar(
                    name=text(series),
                    legendgroup=text(series),
                    showlegend=col == 1,
                    offsetgroup=str(i),
                    x=x,
                    y=[_nan(r.value) if r else float("nan") for r in rows],
                    marker=dict(color=COLORS[i % len(COLORS)]),
                    error_y=dict(
                        type="data", symmetric=False, array=hi, arrayminus=lo, thickness=1.2, width=3, visible=col == 1
                    ),
                    customdata=[text(r.hover) if r else "" for r in rows],
                    hovertemplate="%{customdata}<extra></extra>",
                ),
                row=1,
                col=col,
            )
            marks = _mark_trace(x, rows, str(i), text(series))
            if marks is not None:
                fig.add_trace(marks, row=1, col=col)
        fig.add_hline(y=1.0, line=dict(color="#555", width=1, dash="dash"), row=1, col=col)
    fig.update_xaxes(type="category", gridcolor="#e5e5e5", showline=True, linecolor="#999", automargin=True)
    fig.update_yaxes(
        title_text="relative to baseline governor", gridcolor="#e5e5e5", showline=True, linecolor="#999", col=1
    )
    fig.update_yaxes(gridcolor="#e5e5e5", showline=True, linecolor="#999", col=2)
    return fig


def scatter_figure(title: str, points: Sequence[Point], *, x_title: str, y_title: str) -> go.Figure:
    """Colour = series, symbol = shape; points sharing `link` are joined (e.g. one cell under each governor)."""
    fig = go.Figure(layout=_layout(text(title), xaxis=_axis(text(x_title)), yaxis=_axis(text(y_title))))
    links: dict[str, list[Point]] = {}
    for p in points:
        if p.link:
            links.setdefault(p.link, []).append(p)
    lx: list[float | None] = []
    ly: list[float | None] = []
    for ps in links.values():
        if len(ps) > 1:
            ps = sorted(ps, key=lambda p: p.x)
            lx += [p.x for p in ps] + [None]
            ly += [p.y for p in ps] + [None]
    if lx:
        fig.add_trace(
            go.Scatter(x=lx, y=ly, mode="lines", line=dict(color="#ccc", width=1), hoverinfo="skip", showlegend=False)
        )
    shapes = list(dict.fromkeys(p.shape for p in points))
    for i, series in enumerate(dict.fromkeys(p.series for p in points)):
        ps = [p for p in points if p.series == series]
        fig.add_trace(
            go.Scatter(
                name=text(series),
                x=[p.x for p in ps],
                y=[p.y for p in ps],
                mode="markers",
                marker=dict(
                    size=10,
                    color=COLORS[i % len(COLORS)],
                    line=dict(width=1, color="#333"),
                    symbol=[SYMBOLS[shapes.index(p.shape) % len(SYMBOLS)] for p in ps],
                ),
                customdata=[text(p.hover) for p in ps],
                hovertemplate="%{customdata}<extra></extra>",
            )
        )
    for j, shape in enumerate(shapes):  # legend entries for the symbols
        fig.add_trace(
            go.Scatter(
                name=text(shape),
                x=[None],
                y=[None],
                mode="markers",
                legendgroup="shape",
                marker=dict(size=10, color="#999", symbol=SYMBOLS[j % len(SYMBOLS)]),
            )
        )
    return fig


def sweep_figure(title: str, points: Sequence[SweepPoint], *, x_title: str, y_title: str) -> go.Figure:
    """A value against a swept one (time or energy per step against a pinned frequency): one line per series, in x
    order, with asymmetric CI error bars."""
    fig = go.Figure(
        layout=_layout(text(title), xaxis=_axis(text(x_title)), yaxis=_axis(text(y_title)), hovermode="closest")
    )
    for i, series in enumerate(dict.fromkeys(p.series for p in points)):
        ps = sorted((p for p in points if p.series == series), key=lambda p: p.x)
        fig.add_trace(
            go.Scatter(
                name=text(series),
                x=[p.x for p in ps],
                y=[_nan(p.y) for p in ps],
                mode="lines+markers",
                line=dict(color=COLORS[i % len(COLORS)], width=1.5),
                marker=dict(size=8, color=COLORS[i % len(COLORS)], symbol=SYMBOLS[i % len(SYMBOLS)]),
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=[max(0.0, p.high - p.y) if math.isfinite(p.high) else 0.0 for p in ps],
                    arrayminus=[max(0.0, p.y - p.low) if math.isfinite(p.low) else 0.0 for p in ps],
                    thickness=1.2,
                    width=4,
                ),
                customdata=[text(p.hover) for p in ps],
                hovertemplate="%{customdata}<extra></extra>",
            )
        )
    return fig


def series_figure(title: str, series: Sequence[Series], *, x_title: str, y_title: str) -> go.Figure:
    """Lines per cell; warm-up samples as open markers."""
    fig = go.Figure(
        layout=_layout(text(title), xaxis=_axis(text(x_title)), yaxis=_axis(text(y_title)), hovermode="closest")
    )
    for i, s in enumerate(series):
        color = COLORS[i % len(COLORS)]
        fig.add_trace(
            go.Scatter(
                name=text(s.name),
                x=np.asarray(s.x, dtype=np.float32),
                y=np.asarray(s.y, dtype=np.float32),
                mode="lines+markers",
                line=dict(color=color, width=1),
                marker=dict(size=5, color=color, symbol=np.where(np.asarray(s.warmup, bool), "circle-open", "circle")),
                customdata=[text(s.name)] * len(s.x),
                hovertemplate="%{customdata}<br>step %{x}: %{y:.4g}<extra></extra>",
            )
        )
    return fig


def segment_figure(
    title: str, segments: Sequence[Segment], *, x_title: str, y_title: str, x_is_time: bool
) -> go.Figure:
    """One line per series made of (start, end) segments per cell, broken between cells."""
    fig = go.Figure(
        layout=_layout(
            text(title),
            xaxis=_axis(text(x_title), type="date" if x_is_time else "linear"),
            yaxis=_axis(text(y_title)),
            hovermode="closest",
        )
    )
    for i, series in enumerate(dict.fromkeys(s.series for s in segments)):
        xs: list[object] = []
        ys: list[float | None] = []
        hover: list[str] = []
        for s in segments:
            if s.series != series:
                continue
            xs += [s.x0, s.x1, None]
            ys += [None if not math.isfinite(s.y0) else s.y0, None if not math.isfinite(s.y1) else s.y1, None]
            hover += [text(s.hover) + " (start)", text(s.hover) + " (end)", ""]
        fig.add_trace(
            go.Scatter(
                name=text(series),
                x=xs,
                y=ys,
                mode="lines+markers",
                line=dict(color=COLORS[i % len(COLORS)], width=2),
                marker=dict(size=5),
                customdata=hover,
                hovertemplate="%{customdata}: %{y:.4g}<extra></extra>",
            )
        )
    return fig


def trace_figure(title: str, traces: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> go.Figure:
    """Power (W) over time (s) per cell."""
    fig = go.Figure(
        layout=_layout(text(title), xaxis=_axis("time in cell (s)"), yaxis=_axis("power (W)"), hovermode="closest")
    )
    for i, (name, t, p) in enumerate(traces):
        fig.add_trace(
            go.Scatter(
                name=text(name),
                x=np.asarray(t, np.float32),
                y=np.asarray(p, np.float32),
                mode="lines",
                line=dict(width=1, color=COLORS[i % len(COLORS)]),
                hovertemplate="%{x:.3f} s: %{y:.3f} W<extra></extra>",
            )
        )
    return fig


def decimate(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_points` points: bucket means of consecutive samples (keeps the level, smooths spikes)."""
    n = len(x)
    if n <= max_points or max_points < 1:
        return np.asarray(x, float), np.asarray(y, float)
    edges = np.linspace(0, n, max_points + 1).astype(int)
    counts = np.diff(edges)
    keep = counts > 0
    sx = np.add.reduceat(np.asarray(x, float), edges[:-1][keep]) / counts[keep]
    sy = np.add.reduceat(np.asarray(y, float), edges[:-1][keep]) / counts[keep]
    return sx, sy


__all__ = [
    "Bar",
    "Point",
    "Segment",
    "Series",
    "SweepPoint",
    "bar_figure",
    "decimate",
    "energy_figure",
    "scatter_figure",
    "segment_figure",
    "series_figure",
    "sweep_figure",
    "text",
    "trace_figure",
]
