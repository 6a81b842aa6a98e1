"""Report model -> one self-contained HTML page.

- plotly.js is inlined once in the head; each figure's JSON sits in an inert `<script type="application/json">` and
  one loader draws them all. A Content-Security-Policy forbids every network load (`default-src 'none'`), so the
  page works offline by construction and a stray URL could not load anything.
- Everything that comes from a device or a campaign file is escaped: `_e()` for HTML text and attributes, `<`, `>`
  and `&` as \\u escapes inside JSON, and figures escape their own text (autlearn.reports.figures.text).
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Iterable, Sequence
from functools import cache

import plotly.io as pio
from plotly.offline import get_plotlyjs

from autlearn.reports.model import SIGNIFICANCE_TEST, CellRow, Comparison, FigureSlot, NoteGroup, Outcome, Report

CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:; connect-src 'none'; base-uri 'none'; form-action 'none'"
)
PLOTLY_CONFIG = {
    "displaylogo": False,
    "responsive": True,
    "showLink": False,
    "showSendToCloud": False,
    "modeBarButtonsToRemove": ["sendDataToCloud"],
}
LABEL_TEXT = {
    "virtual": "measured on a virtual phone (no real hardware)",
    "modeled": "energy from a power model, not an instrument",
    "simulated": "from a simulated instrument",
    "measured": "measured on real hardware",
}
SECTIONS = (
    ("time", "Training time"),
    ("energy", "Energy"),
    ("stability", "Stability: warm-up, drift, thermals"),
    ("compare", "Before / after"),
)

CSS = """
:root{--fg:#1d1d1f;--mute:#666;--line:#ddd;--warn:#8a5a00;--bad:#a40000;--ok:#1b6e20}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:var(--fg);
 margin:0 auto;max-width:1200px;padding:16px 24px 48px}
h1{font-size:24px;margin:8px 0 4px}h2{font-size:19px;margin:32px 0 8px;border-bottom:1px solid var(--line);
 padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
.meta{color:var(--mute);margin:2px 0}
.banner{background:#fff4d6;border:1px solid #e8c66a;border-radius:6px;padding:10px 14px;margin:12px 0}
.state{font-weight:600;margin:10px 0}
.counts span{display:inline-block;margin:0 8px 4px 0;padding:2px 8px;border:1px solid var(--line);border-radius:10px}
.note{color:var(--warn);background:#fbf7ee;border-left:3px solid #e0b000;padding:8px 12px;margin:8px 0}
nav a{margin-right:14px}
table{border-collapse:collapse;width:100%;margin:6px 0 14px;font-size:13px}
th,td{border-bottom:1px solid var(--line);padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f5f5f7;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.noclaim td{color:var(--mute)}
tr.flagged td{background:#fff0f0}tr.flagged td:first-child{border-left:3px solid var(--bad)}
.flag{color:var(--bad);font-weight:600}
.sig{color:var(--ok);font-weight:700}.ns{color:var(--mute)}
.notegroup p{margin:0}.notegroup details{margin:4px 0 0}.notegroup table{color:var(--fg);background:white}
.badge{display:inline-block;font-size:11px;padding:0 6px;border-radius:8px;margin:0 2px;border:1px solid #bbb;
 background:#eee;white-space:nowrap}
.b-virtual{background:#e3ecff;border-color:#7a9be0}.b-modeled{background:#ffe9d6;border-color:#e09a5a}
.b-simulated{background:#f3e3ff;border-color:#b07ae0}.b-measured{background:#e3f6e5;border-color:#6ab072}
.v-faster{color:var(--ok);font-weight:600}.v-slower{color:var(--bad);font-weight:600}.v-same{color:var(--mute)}
.warn{color:var(--warn)}
figure.fig{margin:10px 0 22px;border:1px solid var(--line);border-radius:6px;padding:6px}
figure.fig figcaption{font-size:12px;color:var(--mute);margin:2px 4px}
.plot{width:100%;min-height:420px}
details{margin:6px 0}
footer{margin-top:40px;color:var(--mute);font-size:12px}
"""

LOADER = """
(function(){
  var figs = document.querySelectorAll('div.plot[data-figure]');
  for (var i = 0; i < figs.length; i++) {
    var el = figs[i];
    try {
      var spec = JSON.parse(document.getElementById(el.id + '-data').textContent);
      var config = JSON.parse(document.getElementById('autlearn-plotly-config').textContent);
      Plotly.newPlot(el, spec.data, spec.layout, config).catch(function(err){ console.error(err); });
    } catch (err) {
      el.textContent = 'This figure could not be drawn: ' + err;
      console.error(err);
    }
  }
})();
"""


class Markup(str):
    """HTML this module built from escaped parts; `_cell` passes it through unescaped."""


def _e(s: object) -> str:
    return html.escape("" if s is None else str(s), quote=True)


def _json_for_script(doc: object) -> str:
    """JSON safe inside a <script> element: no `<`, `>` or `&` (all inside strings: \\u escapes)."""
    s = doc if isinstance(doc, str) else json.dumps(doc, separators=(",", ":"))
    return s.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


@cache
def _plotly_js() -> str:

    js: str = get_plotlyjs()
    return js.replace("</script", "<\\/script")  # never present today; keep the element closed where we close it


def _num(x: float, digits: int = 4) -> str:
    return "–" if x is None or not isinstance(x, (int, float)) or not math.isfinite(x) else f"{x:.{digits}g}"


def _ratio(x: float) -> str:
    """A speedup: 3 significant digits, whole numbers from 1000 on (not 5.67e+03)."""
    return f"{x:,.0f}" if isinstance(x, (int, float)) and math.isfinite(x) and abs(x) >= 1000 else _num(x, 3)


def _pct(x: float) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.1%}"


def _badges(labels: Iterable[str]) -> Markup:
    out = []
    for lb in labels:
        cls = f" b-{lb}" if lb in LABEL_TEXT else ""
        out.append(f'<span class="badge{cls}" title="{_e(LABEL_TEXT.get(lb, lb))}">{_e(lb)}</span>')
    return Markup("".join(out))


def _cell(v: object, cls: str = "") -> str:
    body = v if isinstance(v, Markup) else _e(v)
    return f'<td class="{cls}">{body}</td>' if cls else f"<td>{body}</td>"


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    num: Iterable[int] = (),
    row_class: Sequence[str] | None = None,
) -> str:
    num = set(num)
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{_e(row_class[i])}"' if row_class and row_class[i] else ""
        body.append(f"<tr{cls}>" + "".join(_cell(v, "num" if j in num else "") for j, v in enumerate(r)) + "</tr>")
    if not body:
        return '<p class="note">Nothing to list.</p>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _ci(lo: float, hi: float) -> str:
    return f"[{_num(lo)}, {_num(hi)}]" if math.isfinite(lo) and math.isfinite(hi) else "–"


def _p(c: Comparison) -> Markup:
    """The p value with its significance mark (the same marks as on the figures' bars)."""
    if not math.isfinite(c.p_value):
        return Markup("–")
    mark = (
        '<span class="sig" title="significant">*</span>'
        if c.significant
        else '<span class="ns" title="not significant">n.s.</span>'
    )
    return Markup(f"{_e(_num(c.p_value, 2))} {mark}")


def _sig_line(alpha: float) -> str:
    return (
        f'<p class="siglegend">p: {_e(SIGNIFICANCE_TEST)} test on the timed steps of the two cells; '
        f'<span class="sig">*</span> significant at α = {_e(alpha)}, <span class="ns">n.s.</span> not significant. '
        "A claim (faster / slower) also needs the minimum ratio; rows without one are grey.</p>"
    )


def _note_group(g: NoteGroup) -> str:
    return (
        f'<div class="note notegroup" data-key="{_e(g.key)}"><p>{_e(g.text)}</p>'
        f"<details><summary>list ({len(g.rows)} row{'' if len(g.rows) == 1 else 's'})</summary>"
        + _table(g.headers, g.rows)
        + "</details></div>"
    )


def _verdict(c: Comparison) -> Markup:
    word = {"faster": "faster", "slower": "slower"}.get(c.verdict, "no claim")
    return Markup(f'<span class="v-{_e(c.verdict)}">{_e(word)}</span>')


# ---------------------------------------------------------------------------------------------------------- parts
def _figure(slot: FigureSlot, i: int) -> str:
    if slot.figure is None:
        return (
            f'<figure class="fig" data-key="{_e(slot.key)}"><figcaption>{_e(slot.title)}</figcaption>'
            f'<p class="note nofig">{_e(slot.note)}</p></figure>'
        )
    spec = pio.to_json(slot.figure, validate=False, pretty=False, remove_uids=True)
    fid = f"fig-{i}"
    return (
        f'<figure class="fig" data-key="{_e(slot.key)}">'
        f'<div class="plot" id="{fid}" data-figure="{_e(slot.key)}"></div>'
        f'<script type="application/json" id="{fid}-data">{_json_for_script(spec)}</script>'
        + (f"<figcaption>{_e(slot.note)}</figcaption>" if slot.note else "")
        + "</figure>"
    )


def _comparisons_table(rows: Sequence[Comparison], first: str = "group") -> str:
    ordered = sorted(rows, key=lambda c: (not c.claim, c.key, c.candidate))
    return _table(
        [
            first,
            "baseline",
            "candidate",
            "baseline ms",
            "candidate ms",
            "speedup",
            "95% CI",
            "p (Mann-Whitney U)",
            "verdict",
            "why",
            "labels",
        ],
        (
            [
                c.key,
                c.baseline,
                c.candidate,
                _num(c.baseline_median_ms),
                _num(c.candidate_median_ms),
                f"{_ratio(c.speedup)}×",
                _ci(c.ci_low, c.ci_high),
                _p(c),
                _verdict(c),
                c.reason + ("; " + "; ".join(c.notes) if c.notes else ""),
                _badges(c.labels),
            ]
            for c in ordered
        ),
        num=(3, 4, 5, 6, 7),
        row_class=["" if c.claim else "noclaim" for c in ordered],
    )


def _cells_table(cells: Sequence[CellRow]) -> str:
    flags = any(c.flagged for c in cells)
    extra = list(dict.fromkeys(k for c in cells for k, _ in c.extra))  # freq_* columns, when the results have them
    return _table(
        (["flag"] if flags else [])
        + [
            "device",
            "workload",
            "variant",
            "affinity",
            "governor (applied)",
            "n",
            "median ms",
            "95% CI ms",
            "CV",
            "warnings",
            "energy J/step",
            "mean W",
            "°C start→end",
            "harness s",
            "wait s",
            "labels",
            "cell",
        ]
        + extra,
        (
            ([Markup(f'<span class="flag">{_e(c.flag_reason)}</span>') if c.flagged else ""] if flags else [])
            + [
                f"{c.device_model} ({c.device_serial})",
                c.case,
                c.variant,
                c.affinity,
                c.governor + (f" ({c.governor_applied or 'not applied'})" if c.governor_applied != c.governor else ""),
                c.n,
                _num(c.median_ms),
                _ci(c.ci_low_ms, c.ci_high_ms),
                _pct(c.cv),
                Markup(f'<span class="warn">{_e("; ".join(c.warnings))}</span>') if c.warnings else "",
                Markup(f'<span class="warn">{_e(c.energy_reason)}</span>')
                if c.energy_reason
                else _num(c.energy_median_j),
                _num(c.mean_power_w, 3),
                f"{_num(c.temp_start_c, 3)}→{_num(c.temp_end_c, 3)}" + (" throttled" if c.throttled else ""),
                _num(c.harness_s, 2),
                _num(c.wait_s, 2),
                _badges(c.labels),
                c.cell_id,
            ]
            + [dict(c.extra).get(k, "") for k in extra]
            for c in cells
        ),
        num=[i + flags for i in (5, 6, 7, 8, 10, 11, 13, 14)],
        row_class=["flagged" if c.flagged else "" for c in cells],
    )


def _outcomes_table(rows: Sequence[Outcome]) -> str:
    return _table(
        ["status", "cell", "reason", "cell id", "spec key"],
        (
            [o.status, o.label or "(unknown: only its spec key is recorded)", o.reason, o.cell_id, o.spec_key]
            for o in rows
        ),
    )


def _devices_table(report: Report) -> str:
    rows = []
    for d in report.devices:
        gov = "; ".join(f"{r} → {a}" + (f" ({why})" if why and a != r else "") for r, a, why in d.governors)
        rows.append(
            [
                d.serial,
                d.model,
                d.soc,
                d.android,
                "yes" if d.virtual else "no" if d.virtual is not None else "?",
                d.root,
                gov or "–",
                ", ".join(d.energy_sources) or "–",
                f"{d.cells_ok} ok / {d.cells_failed} failed / {d.cells_skipped} skipped",
                _badges(d.labels),
            ]
        )
    return _table(
        [
            "serial",
            "model",
            "SoC",
            "Android",
            "virtual",
            "root",
            "governor requested → applied",
            "energy source",
            "cells",
            "labels",
        ],
        rows,
    )


def _banner(report: Report) -> str:
    labels = dict(report.labels)
    total = len(report.cells)
    parts = []
    if labels.get("virtual"):
        parts.append(
            f"{labels['virtual']} of {total} cells ran on virtual phones {_badges(['virtual'])} — their "
            "times come from this host's CPU running the phone's workload, not a phone SoC, slowed "
            "to each cluster's MODELED frequency and capacity (the time scale is this host's CPU, its "
            "noise included)"
        )
    if labels.get("modeled"):
        parts.append(
            f"{labels['modeled']} of {total} cells have modeled energy {_badges(['modeled'])} — from a "
            "power model, not an instrument"
        )
    if labels.get("simulated"):
        parts.append(
            f"{labels['simulated']} of {total} cells come from a simulated instrument {_badges(['simulated'])}"
        )
    if not parts:
        return ""
    return (
        '<div class="banner" id="labels-banner"><b>Not everything here was measured on real phones.</b> '
        + "; ".join(parts)
        + ". Every table row and figure entry carries these labels.</div>"
    )


def render(report: Report) -> str:
    """The whole page as a string."""
    counts = dict(report.counts)
    figs = list(enumerate(report.figures))
    by_section = {key: [(i, f) for i, f in figs if f.section == key] for key, _ in SECTIONS}
    missing = [o for o in report.outcomes if o.status in ("not run", "no data", "interrupted")]
    failed = [o for o in report.outcomes if o.status in ("failed", "skipped")]
    stale = [o for o in report.outcomes if o.status == "stale"]
    claims = [c for c in report.comparisons if c.claim]
    o = report.options
    nav = [("missing", "What is missing")] if missing or not report.cells else []
    nav += [("devices", "Devices")] + [(k, t) for k, t in SECTIONS if by_section[k]] + [("cells", "Cells")]
    nav += [("failed", "Failed and skipped")] if failed or stale else []
    p: list[str] = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>autlearn report: {_e(report.campaign)}</title>",
        f"<style>{CSS}</style>",
        f"<script>{_plotly_js()}</script>",
        "</head><body>",
        f"<header><h1>autlearn report: {_e(report.campaign)}</h1>",
    ]
    if report.description:
        p.append(f'<p class="meta">{_e(report.description)}</p>')
    p.append(
        f'<p class="meta">results: <code>{_e(report.source)}</code> · generated '
        f"{_e(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(report.generated_at)))} · baseline variant "
        f"<b>{_e(report.baseline)}</b> · baseline governor <b>{_e(report.baseline_governor or '–')}</b> · "
        f"claims need Mann-Whitney p &lt; {_e(o.alpha)} and a ratio ≥ {_e(o.min_ratio)}</p></header>"
    )
    p.append(_banner(report))
    p.append(f'<p class="state" id="state">{_e(report.state)}</p>')
    p.append(
        '<p class="counts">'
        + "".join(f"<span>{_e(k)}: <b>{_e(v)}</b></span>" for k, v in counts.items() if v or k in ("planned", "ok"))
        + "</p>"
    )
    p.extend(_note_group(g) for g in report.note_groups)
    for n in report.notes:
        p.append(f'<p class="note">{_e(n)}</p>')
    p.append("<nav>" + "".join(f'<a href="#{k}">{_e(t)}</a>' for k, t in nav) + "</nav>")

    if missing or not report.cells:
        p.append('<section id="missing"><h2>What is missing</h2>')
        if not report.cells:
            p.append(f'<p class="note">No finished cells: this report has no measurements yet. {_e(report.state)}</p>')
        if missing:
            p.append(f"<p>{len(missing)} planned cell(s) have no results:</p>" + _outcomes_table(missing))
            if any(not m.label for m in missing):
                p.append(
                    "<p>Cells shown by spec key only belong to devices that have not reported anything yet "
                    "(the results directory records the plan as cell ids and spec keys).</p>"
                )
        p.append("</section>")

    p.append('<section id="devices"><h2>Devices</h2>')
    p.append(_devices_table(report) if report.devices else '<p class="note">No device has reported yet.</p>')
    p.append("</section>")

    for key, title in SECTIONS:
        if not by_section[key]:
            continue
        p.append(f'<section id="{key}"><h2>{_e(title)}</h2>')
        if key == "time":
            p.append(
                f"<p>Speedup = median time per step of the baseline / of the candidate (&gt; 1: the candidate "
                f"is faster), on a log axis. Error bars are 95% bootstrap intervals of that ratio; the mark above "
                f"a bar is its {_e(SIGNIFICANCE_TEST)} test at α = {_e(o.alpha)} (* significant, n.s. not). "
                f"Baseline variant <b>{_e(report.baseline)}</b> (the compiler claim); compressed and cached are "
                f"also compared with full (the paper's Fig. 8).</p>"
            )
        if key == "energy":
            p.append(
                f"<p>Energy per step (median) and mean power over the timed steps, relative to the governor "
                f"<b>{_e(report.baseline_governor or '–')}</b> on the same device, workload and variant (the "
                f"paper's Fig. 9). Legends name the requested governor; the applied one is in the hover text "
                f"and the device table.</p>"
            )
        if key == "compare":
            p.append(
                f"<p>Before: <b>{_e(report.other)}</b>, after: <b>{_e(report.campaign)}</b>. Cells are matched "
                f"by device, workload, config, variant, batch, governor and affinity. Speedup = median before / "
                f"median after (log axis; * / n.s.: {_e(SIGNIFICANCE_TEST)} test at α = {_e(o.alpha)}).</p>"
            )
        p.extend(_figure(f, i) for i, f in by_section[key])
        if key == "time":
            p.append(
                f"<h3>Variant comparisons ({len(claims)} of {len(report.comparisons)} pass both the test and "
                f"the minimum ratio)</h3>"
            )
            p.append(
                _sig_line(o.alpha) + _comparisons_table(report.comparisons)
                if report.comparisons
                else '<p class="note">No variant pairs to compare.</p>'
            )
        if key == "compare":
            p.append(
                "<h3>Per matching cell</h3>" + _sig_line(o.alpha) + _comparisons_table(report.campaign_diff, "cell")
            )
            if report.unmatched:
                p.append(
                    f"<details><summary>{len(report.unmatched)} cell(s) without a partner</summary>"
                    + _table(["where", "cell"], ([s, c] for s, c in report.unmatched))
                    + "</details>"
                )
        p.append("</section>")

    p.append(
        '<section id="cells"><h2>Cells</h2><p>Per finished cell: timed steps only; the CI is a 95% bootstrap '
        "interval of the median; CV above 10% and warm-up/drift problems are flagged."
        + (
            f' <span class="flag">{sum(c.flagged for c in report.cells)} flagged cell(s)</span>: the results flag them '
            "(first column); their rows are marked."
            if any(c.flagged for c in report.cells)
            else ""
        )
        + "</p>"
    )
    p.append(_cells_table(report.cells) if report.cells else '<p class="note">No finished cells.</p>')
    p.append("</section>")
    if failed or stale:
        p.append('<section id="failed"><h2>Failed and skipped</h2>')
        if failed:
            p.append(_outcomes_table(failed))
        if stale:
            p.append("<h3>Stale (left out)</h3>" + _outcomes_table(stale))
        p.append("</section>")
    p.append(
        "<footer>Written by <code>autlearn report</code>. Self-contained: plotly.js is inlined and the page "
        "loads nothing from the network. The same numbers are in the JSON file beside this page.</footer>"
    )
    p.append(
        f'<script type="application/json" id="autlearn-plotly-config">{_json_for_script(PLOTLY_CONFIG)}'
        f"</script><script>{LOADER}</script></body></html>"
    )
    return "\n".join(x for x in p if x)


__all__ = ["CSP", "Markup", "render"]
