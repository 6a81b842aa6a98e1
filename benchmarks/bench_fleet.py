"""Fleet scaling: wall time of the same campaign on 1 vs N virtual phones (one worker per device).

Runs in its own lab (private AUTLEARN_HOME and adb server port) and prints a table; writes
benchmarks/results/fleet.csv. Virtual phones share this host's CPU: with fewer host cores than phones the
runner steps compete, so the N-phone wall time includes that contention and is reported as measured.

    python benchmarks/bench_fleet.py [--phones 3] [--model lstm] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phones", type=int, default=3)
    ap.add_argument("--model", default="lstm", choices=("lstm", "mobilenet"))
    ap.add_argument("--variant", default="full")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repetitions", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="runner threads per phone")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="autlearn-bench-fleet-"))
    os.environ.update(AUTLEARN_HOME=str(home), ANDROID_ADB_SERVER_PORT=str(free_port()), ADB_LIBUSB="0")
    os.environ.setdefault("AUTLEARN_ARTIFACTS", str(Path.home() / ".autlearn" / "artifacts"))
    os.environ.setdefault("AUTLEARN_CACHE_DIR", str(Path.home() / ".autlearn" / "cache"))  # warm runner builds

    import pandas as pd

    from profiler.campaign import run_campaign
    from workloads.artifact_cache import artifact_provider
    from profiler.campaign_config import load_campaign
    from testbed.lab import Lab, find_adb, find_free_ports

    lab = Lab(home)
    rows = []
    try:
        phones = lab.up(["legacy"] * args.phones, base_port=find_free_ports(args.phones))
        provider = artifact_provider(Path(os.environ["AUTLEARN_ARTIFACTS"]), log=print)
        for n in (1, args.phones):
            serials = [p.serial for p in phones[:n]]
            toml = home / f"fleet{n}.toml"
            toml.write_text(textwrap.dedent(f"""
                name = "fleet{n}"
                warmup = 1
                steps = {args.steps}
                repetitions = {args.repetitions}
                [devices]
                serials = {serials!r}
                [[workload]]
                model = "{args.model}"
                variants = ["{args.variant}"]
                [governors]
                intents = ["performance"]
                [cooldown]
                max_temp_c = 95
                timeout_s = 5
            """).replace("'", '"'))
            campaign = load_campaign(toml)
            for cell in campaign.plan([type("D", (), {"serial": s, "model": "", "virtual": True, "abi": "x86_64"})()
                                       for s in serials]):
                provider(cell, "x86_64")  # build before timing: the benchmark is about running, not compiling
            t0 = time.perf_counter()
            out = run_campaign(campaign, home / "results", provider, threads=args.threads)
            wall = time.perf_counter() - t0
            rows.append({"phones": n, "cells": out.ok, "failed": out.failed, "wall_s": round(wall, 2),
                         "host_cores": os.cpu_count(), "model": args.model, "variant": args.variant,
                         "steps": args.steps, "repetitions": args.repetitions, "threads": args.threads,
                         "devices": "virtual"})
    finally:
        lab.down()
        subprocess.run([find_adb(), "kill-server"], capture_output=True, timeout=30)
    df = pd.DataFrame(rows)
    df["wall_vs_1"] = (df["wall_s"] / df["wall_s"].iloc[0]).round(2)
    print(df.to_string(index=False))
    RESULTS.mkdir(parents=True, exist_ok=True)
    df.to_csv(RESULTS / "fleet.csv", index=False)
    print(f"\nwritten {RESULTS / 'fleet.csv'}; virtual phones share {os.cpu_count()} host cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
