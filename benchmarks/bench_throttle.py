"""The virtual phones' time scale (testbed/dvfs.py SignalThrottle) on this host: how closely a busy process gets the
share of a host CPU it is given, and what the throttle costs a process it does not throttle (share 1.0).

    PYTHONPATH=. python benchmarks/bench_throttle.py [--seconds 2] [--period-ms 10] [--no-keep-warm]

For each share: a fresh busy-loop process in its own process group runs `seconds` wall seconds under the throttle;
achieved share = its CPU time / wall time, relative to the same loop unthrottled. Share 1.0 is also run with the
throttle thread busy on another (throttled) group, to show that unthrottled groups are never signalled. Numbers
depend on this host's load (2 shared cores): run it a few times.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autlearn.testbed.dvfs import SignalThrottle  # noqa: E402

BUSY = "import time\nn = 0\nwhile True:\n    n += 1\n"
# counted work: iterations done in `seconds` (per-process throughput, includes cache effects of stop/continue)
COUNT = (
    "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nn = 0\n"
    "while time.monotonic() < end:\n    n += 1\nprint(n)\n"
)


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(
    share: float | None, seconds: float, period_s: float, other: float | None = None, keep_warm: bool = True
) -> tuple[float, int]:
    """(CPU s / wall s, loop iterations) of a counting process at `share` (None: no throttle thread at all);
    `other`: a second, busy group throttled at that share at the same time."""
    thr = SignalThrottle(period_s, keep_warm=keep_warm)
    p = subprocess.Popen(
        [sys.executable, "-c", COUNT, str(seconds)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    q = subprocess.Popen([sys.executable, "-c", BUSY], start_new_session=True) if other is not None else None
    shares = {}
    if share is not None:
        shares[p.pid] = share
    if q is not None:
        shares[q.pid] = other
    if share is not None or other is not None:
        thr.set_shares(shares)
        thr.start()
    t0 = time.monotonic()
    try:
        out = p.communicate(timeout=seconds + 30)[0]
        wall = time.monotonic() - t0
    finally:
        thr.close()
        if q is not None:
            q.kill()
            q.wait()
    # CPU time of the exited child: from its rusage via os.wait4 is gone; use iterations instead
    return wall, int(out.strip() or 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--period-ms", type=float, default=10.0)
    ap.add_argument("--no-keep-warm", action="store_true", help="throttle without keep-warm spinners")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    period = args.period_ms / 1e3
    print(
        f"host: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; period {args.period_ms:g} ms; "
        f"{args.seconds:g} s per run, median of {args.repeat}; keep-warm {'off' if args.no_keep_warm else 'on'}"
    )

    def med(f):
        vals = sorted(f() for _ in range(args.repeat))
        return vals[len(vals) // 2]

    base = med(lambda: run(None, args.seconds, period)[1])
    print(f"{'case':52s} {'iterations':>12s} {'vs unthrottled':>15s} {'/ share':>8s}")
    print(f"{'no throttle thread':52s} {base:12d} {1.0:15.3f} {1.0:8.3f}")
    rows = [("share 1.0 (never signalled)", 1.0, None), ("share 1.0 while another group is throttled at 0.3", 1.0, 0.3)]
    rows += [(f"share {s:g}", s, None) for s in (0.8, 0.5, 0.25, 0.12, 0.066)]
    for name, share, other in rows:
        n = med(
            lambda share=share, other=other: run(share, args.seconds, period, other, keep_warm=not args.no_keep_warm)[1]
        )
        print(f"{name:52s} {n:12d} {n / base:15.3f} {n / base / share:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
