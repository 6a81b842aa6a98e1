"""Fleet scaling: wall time of the same campaign on 1 vs N virtual phones (one worker per device); with
`--hosts`, the same phones on 1 vs 2 simulated USB hosts of a local Ray cluster (autlearn.engine.cluster), and artifact
build throughput with builds spread over 2 Ray nodes vs 1.

Runs in its own lab (private AUTLEARN_HOME and adb server port) and prints a table; writes
benchmarks/results/fleet.csv (or fleet_hosts.csv and fleet_hosts.json). Virtual phones share this host's CPU: with
fewer host cores than phones the runner steps compete, so the N-phone wall time includes that contention and is
reported as measured.

    python benchmarks/bench_fleet.py [--phones 3] [--model lstm] [--steps 10]
    python benchmarks/bench_fleet.py --hosts [--phones 2] [--builds 4]
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
    ap.add_argument("--hosts", action="store_true", help="1 vs 2 simulated hosts on Ray, and build throughput")
    ap.add_argument("--builds", type=int, default=4, help="--hosts: distinct artifacts built per cluster")
    args = ap.parse_args()
    if args.hosts:
        return hosts_main(args)

    home = Path(tempfile.mkdtemp(prefix="autlearn-bench-fleet-"))
    os.environ.update(AUTLEARN_HOME=str(home), ANDROID_ADB_SERVER_PORT=str(free_port()), ADB_LIBUSB="0")
    os.environ.setdefault("AUTLEARN_ARTIFACTS", str(Path.home() / ".autlearn" / "artifacts"))
    os.environ.setdefault("AUTLEARN_CACHE_DIR", str(Path.home() / ".autlearn" / "cache"))  # warm runner builds

    import pandas as pd

    from autlearn.engine.campaign import run_campaign
    from autlearn.engine.campaign_config import load_campaign
    from autlearn.pipelines.artifact_cache import artifact_provider
    from autlearn.testbed.lab import Lab, find_adb, find_free_ports

    lab = Lab(home)
    rows = []
    try:
        phones = lab.up(["legacy"] * args.phones, base_port=find_free_ports(args.phones))
        provider = artifact_provider(Path(os.environ["AUTLEARN_ARTIFACTS"]), log=print)
        for n in (1, args.phones):
            serials = [p.serial for p in phones[:n]]
            toml = home / f"fleet{n}.toml"
            toml.write_text(
                textwrap.dedent(f"""
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
            """).replace("'", '"')
            )
            campaign = load_campaign(toml)
            for cell in campaign.plan(
                [type("D", (), {"serial": s, "model": "", "virtual": True, "abi": "x86_64"})() for s in serials]
            ):
                provider(cell, "x86_64")  # build before timing: the benchmark is about running, not compiling
            t0 = time.perf_counter()
            out = run_campaign(campaign, home / "results", provider, threads=args.threads)
            wall = time.perf_counter() - t0
            rows.append(
                {
                    "phones": n,
                    "cells": out.ok,
                    "failed": out.failed,
                    "wall_s": round(wall, 2),
                    "host_cores": os.cpu_count(),
                    "model": args.model,
                    "variant": args.variant,
                    "steps": args.steps,
                    "repetitions": args.repetitions,
                    "threads": args.threads,
                    "devices": "virtual",
                }
            )
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


# builds for the throughput ratio: a tiny LSTM (a TVM compile and link of ~10 s each), so that the ratio is about
# dispatching builds, not about one model's compile time
TINY_LSTM = {"vocab_size": 50, "embed_dim": 8, "hidden_size": 8, "num_layers": 1, "seq_len": 3}


def _campaign(name: str, serials, args):
    from autlearn.engine.campaign_config import parse_campaign

    return parse_campaign(
        {
            "name": name,
            "warmup": 1,
            "steps": args.steps,
            "repetitions": args.repetitions,
            "energy": "none",
            "devices": {"serials": list(serials)},
            "workload": [{"model": args.model, "variants": [args.variant], "batch": [16]}],
            "governors": {"intents": ["performance", "powersave"]},
            "cooldown": {"max_temp_c": 95, "timeout_s": 5},
        }
    )


def _cells(results_dir: Path):
    """(cells, controller overhead per cell): wall time outside the cells on the busiest device, per cell."""
    from autlearn.engine.store import load_summaries

    s = load_summaries(results_dir)
    busy = (s["finished_at"] - s["started_at"]).groupby(s["device_serial"]).sum()
    per_device = s.groupby("device_serial").size()
    return s, busy, per_device


def hosts_main(args) -> int:
    """The same phones on one host and on two (Ray in both: the ratio is the second host's, not Ray's), plus the
    in-process engine on one host as the reference for what Ray itself costs; then build throughput."""
    home = Path(tempfile.mkdtemp(prefix="autlearn-bench-hosts-"))
    os.environ.update(AUTLEARN_HOME=str(home), ANDROID_ADB_SERVER_PORT=str(free_port()), ADB_LIBUSB="0")
    os.environ.setdefault("AUTLEARN_CACHE_DIR", str(Path.home() / ".autlearn" / "cache"))
    artifacts = Path(os.environ.get("AUTLEARN_ARTIFACTS") or Path.home() / ".autlearn" / "artifacts")

    import json

    import pandas as pd
    from provenance import provenance  # benchmarks/ is on sys.path (run as a script)

    from autlearn.engine.campaign import run_campaign
    from autlearn.engine.campaign_config import parse_campaign
    from autlearn.engine.cluster import ClusterFleet
    from autlearn.engine.fleet import BuildRequest
    from autlearn.pipelines.artifact_cache import artifact_provider
    from autlearn.profiler.paths import tuning_dir
    from autlearn.testbed.cluster_lab import ClusterLab
    from autlearn.testbed.lab import Lab, find_free_ports

    profiles = ["legacy"] * args.phones
    provider = artifact_provider(artifacts, log=print)
    rows, builds = [], []

    def measure(label: str, hosts: int, fleet, serials) -> None:
        campaign = _campaign(label, serials, args)
        t0 = time.perf_counter()
        out = run_campaign(campaign, home / "results", provider, threads=args.threads, fleet=fleet)
        wall = time.perf_counter() - t0
        s, busy, per_device = _cells(out.results_dir)
        worst = busy.idxmax()
        rows.append(
            {
                "engine": label,
                "hosts": hosts,
                "phones": len(serials),
                "cells": out.ok,
                "failed": out.failed,
                "wall_s": round(wall, 2),
                "cell_s_busiest": round(busy.max(), 2),
                "overhead_per_cell_s": round((wall - busy.max()) / per_device[worst], 3),
                "host_cores": os.cpu_count(),
                "model": args.model,
                "steps": args.steps,
                "repetitions": args.repetitions,
                "devices": "virtual",
            }
        )

    # the reference: in-process engine, one adb server (the artifact is built here, before any timing)
    lab = Lab(home / "local")
    try:
        phones = lab.up(profiles, base_port=find_free_ports(len(profiles)), keep_warm=False)
        serials = [p.serial for p in phones]
        from autlearn.profiler.fleet import discover
        from autlearn.profiler.probe import target_id

        facts = {e.serial: e.facts for e in discover(tuple(serials))}
        for cell in _campaign("warm", serials, args).plan(facts.values()):
            provider(cell, target_id(facts[cell.device_serial]))  # the phones' own target: no build while timing
        measure("in-process", 1, None, serials)
    finally:
        lab.down()
    for hosts in (1, 2):
        cl = ClusterLab(home / f"hosts{hosts}")
        per_host = [profiles] if hosts == 1 else [profiles[i::2] for i in range(2)]
        try:
            address = cl.up(per_host, keep_warm=False)
            fleet = ClusterFleet(address)
            names = [e.serial for e in fleet.discover()]
            measure(f"ray-{hosts}-host", hosts, ClusterFleet(address), names)
            # builds: distinct artifacts (batch sizes) into an empty cache, as Ray tasks on 1 node vs 2
            cold = artifact_provider(home / f"cold{hosts}", log=print)
            spec = parse_campaign(
                {
                    "name": "builds",
                    "devices": {"virtual": True},
                    "workload": [
                        {
                            "model": "lstm",
                            "variants": ["full"],
                            "batch": [2**i for i in range(args.builds)],
                            "config": TINY_LSTM,
                        }
                    ],
                }
            )
            cells = spec.plan([type("D", (), {"serial": "x", "model": "", "virtual": True})()])
            # untimed: two other builds warm the runner cache and every node's build worker (torch, TVM imports)
            warm = parse_campaign(
                {
                    "name": "warm",
                    "devices": {"virtual": True},
                    "workload": [{"model": "lstm", "variants": ["full"], "batch": [3, 5], "config": TINY_LSTM}],
                }
            )
            ClusterFleet(address).provider(artifact_provider(home / f"warm{hosts}")).prebuild(
                [
                    BuildRequest(c, "x86_64", tuning_dir())
                    for c in warm.plan([type("D", (), {"serial": "x", "model": "", "virtual": True})()])
                ]
            )
            t0 = time.perf_counter()
            ClusterFleet(address).provider(cold).prebuild([BuildRequest(c, "x86_64", tuning_dir()) for c in cells])
            wall = time.perf_counter() - t0
            built = len(cells) - len(cold.missing([(c, "x86_64") for c in cells]))  # verified in the cache
            builds.append(
                {
                    "nodes": hosts,
                    "model": "lstm (tiny)",
                    "artifacts": len(cells),
                    "built": built,
                    "wall_s": round(wall, 2),
                    "per_min": round(60 * built / wall, 2),
                    "cpus_per_node": 1,
                    "host_cores": os.cpu_count(),
                }
            )
        finally:
            cl.down()
    subprocess.run([find_adb_path(), "kill-server"], capture_output=True, timeout=30)
    df = pd.DataFrame(rows)
    df["wall_vs_1host"] = (df["wall_s"] / df.loc[df["engine"] == "ray-1-host", "wall_s"].iloc[0]).round(2)
    bf = pd.DataFrame(builds)
    bf["throughput_vs_1node"] = (bf["per_min"] / bf["per_min"].iloc[0]).round(2)
    print(df.to_string(index=False))
    print(bf.to_string(index=False))
    RESULTS.mkdir(parents=True, exist_ok=True)
    df.to_csv(RESULTS / "fleet_hosts.csv", index=False)
    import ray

    (RESULTS / "fleet_hosts.json").write_text(
        json.dumps(
            {
                "cells": rows,
                "builds": bf.to_dict(orient="records"),
                **provenance({"ray": ray.__version__, "python": sys.version.split()[0]}),
            },
            indent=1,
        )
    )
    print(
        f"\nwritten {RESULTS / 'fleet_hosts.csv'} and fleet_hosts.json; every simulated host and Ray node shares "
        f"this machine's {os.cpu_count()} cores"
    )
    return 0


def find_adb_path() -> str:
    from autlearn.testbed.lab import find_adb

    return find_adb()


if __name__ == "__main__":
    sys.exit(main())
