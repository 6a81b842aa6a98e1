"""Render an autlearn report in headless Chromium and read back what the page saw (errors, figures drawn)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

CHROMIUM = (
    shutil.which("chromium")
    or shutil.which("chromium-browser")
    or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
)

CHECK = """<script>
window.__check = {errors: [], alerts: 0, csp: []};
var EVIL = '\\x3cscript>alert(1)\\x3c/script>';  // written so that this element is not closed early
window.alert = function () { window.__check.alerts++; };
window.addEventListener('error', function (e) { window.__check.errors.push('error: ' + e.message); });
window.addEventListener('unhandledrejection', function (e) { window.__check.errors.push('rejection: ' + e.reason); });
document.addEventListener('securitypolicyviolation', function (e) { window.__check.csp.push(e.blockedURI + ' ' +
  e.violatedDirective); });
var _ce = console.error; console.error = function () { window.__check.errors.push('console: ' +
  Array.prototype.join.call(arguments, ' ')); return _ce.apply(console, arguments); };
window.addEventListener('load', function () { setTimeout(function () {
  var plots = document.querySelectorAll('.js-plotly-plot'), drawn = 0;
  plots.forEach(function (p) { var s = p.querySelector('svg.main-svg');
    if (s && p.querySelector('.plot .trace, .barlayer .trace, .scatterlayer .trace')) drawn++; });
  var svgText = Array.prototype.map.call(document.querySelectorAll('svg text'), function (t) {
    return t.textContent; }).join('\\n');
  var evilScripts = Array.prototype.filter.call(document.scripts, function (s) {
    return s.textContent.trim() === 'alert(1)'; }).length;  // what an unescaped model would inject
  var out = document.createElement('pre'); out.id = 'autlearn-check';
  out.textContent = JSON.stringify({errors: window.__check.errors, csp: window.__check.csp,
    alerts: window.__check.alerts, plots: plots.length, drawn: drawn, notes: document.querySelectorAll('.nofig').length,
    evilScripts: evilScripts, evilInSvg: svgText.indexOf(EVIL) >= 0,
    evilInText: document.body.innerText.indexOf(EVIL) >= 0});
  document.body.appendChild(out); }, 300); });
</script>"""


def chromium(page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={tmp / 'profile'}",
        "--virtual-time-budget=8000",
        "--window-size=1280,2000",
        *extra,
        page.as_uri(),
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def png_colours(path: Path, max_rows: int = 700) -> int:
    """Distinct colours (sampled) in the top `max_rows` rows of a PNG: a blank page has one or two."""
    from PIL import Image

    with Image.open(path) as im:
        top = im.convert("RGB").crop((0, 0, im.width, min(im.height, max_rows)))
        px = top.tobytes()
        return len({px[i : i + 3] for i in range(0, len(px), 21)})


def check_report(html: Path, tmp: Path) -> tuple[dict, str, Path]:
    """Load `html` (with the CHECK script injected) in headless Chromium; returns (check, dom, screenshot)."""
    checked = tmp / "checked.html"
    checked.write_text(html.read_text().replace("<head>", "<head>" + CHECK, 1))
    shot = tmp / "report.png"
    r = chromium(checked, tmp, "--dump-dom", f"--screenshot={shot}")
    m = re.search(r'<pre id="autlearn-check">(.*?)</pre>', r.stdout, re.S)
    assert m, f"no check output; chromium exit {r.returncode}: {r.stderr[-2000:]}"
    check = json.loads(
        m.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
    )
    return check, r.stdout, shot
