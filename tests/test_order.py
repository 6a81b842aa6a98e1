"""Issue 34: a phone's cells in an interleaved (ABBA) or seeded shuffled order, recorded in campaign.json and
continued by --resume; and cells that launch until the 95 % CI of their median step time is narrow enough (or a cap).

The plan and the launch-count rule are tested pure; end to end, on the session's legacy virtual phone with runner
test doubles (test_campaign's helpers): the executed order is the recorded one across an interrupted run and its
resume, and a CI-target cell stops at the width asked for or at the cap, saying which.
"""

from __future__ import annotations

import _thread
import json
import threading
import time
from pathlib import Path

import pytest
from test_campaign import campaign_file, make_artifact, provider

from autlearn.engine.campaign import run_campaign
from autlearn.engine.campaign_config import DeviceRef, cell_id, load_campaign, order_cells, parse_campaign
from autlearn.engine.store import Store, load_results, load_status, load_summaries
from autlearn.engine.worker import follow_order, stop_reason
from autlearn.profiler.errors import ConfigError
from autlearn.profiler.steps import Step

PHONE = DeviceRef("emu-1", "Pixel 3", True)
BASE = {
    "name": "o",
    "workload": [{"model": "lstm", "variants": ["full", "unoptimized"], "batch": [1, 4]}],
    "governors": ["interactive", "powersave"],
}


def _vg(cells) -> list[tuple[str, str]]:
    return [(c.variant, c.governor) for c in cells]


# ---------------------------------------------------------------------------------------------------------- plan
def test_default_order_interleaves_variants_abba_and_sequential_is_the_old_order():
    cells = parse_campaign(BASE).plan([PHONE])
    assert parse_campaign(BASE).order == "interleaved" and len(cells) == 8
    first, second = cells[:4], cells[4:]  # one block per batch: the cells compared with each other
    assert {c.batch for c in first} == {1} and {c.batch for c in second} == {4}
    assert _vg(first) == [
        ("full", "interactive"),
        ("unoptimized", "interactive"),
        ("unoptimized", "powersave"),
        ("full", "powersave"),
    ]  # variants ABBA; within a block consecutive cells differ in variant or governor
    assert _vg(second) == _vg(first)[::-1]  # the next block backwards
    seq = parse_campaign({**BASE, "order": "sequential"}).plan([PHONE])
    assert [(c.variant, c.batch, c.governor) for c in seq] == [
        (v, b, g) for v in ("full", "unoptimized") for b in (1, 4) for g in ("interactive", "powersave")
    ]
    assert set(cells) == set(seq)  # the same cells (and ids): only the order differs


def test_shuffled_order_is_seeded_per_device_and_a_permutation_of_the_blocks():
    two = [PHONE, DeviceRef("emu-2", "Pixel 4", True)]
    a = parse_campaign({**BASE, "order": "shuffled", "seed": 7}).plan(two)
    again = parse_campaign({**BASE, "order": "shuffled", "seed": 7}).plan(two)
    assert a == again  # seeded: the same order every time
    orders = {s: tuple(parse_campaign({**BASE, "order": "shuffled", "seed": s}).plan([PHONE])) for s in range(8)}
    assert len(set(orders.values())) > 1  # the seed matters
    assert all(set(o) == set(orders[0]) for o in orders.values())
    mine = [c for c in a if c.device_serial == "emu-1"]
    assert [c.batch for c in mine] in ([1] * 4 + [4] * 4, [4] * 4 + [1] * 4)  # randomized complete blocks
    other = [c for c in a if c.device_serial == "emu-2"]
    assert len(other) == 8 and [c.device_serial for c in a] == ["emu-1"] * 8 + ["emu-2"] * 8


def test_order_cells_single_member_blocks_keep_the_plan_order():
    camp = parse_campaign(
        {**BASE, "workload": [{"model": "lstm"}], "governors": ["powersave"], "affinity": ["big", "little"]}
    )
    assert [c.affinity for c in camp.plan([PHONE])] == ["big", "little"]
    assert order_cells([], "interleaved") == []


def test_order_and_samples_settings_validate_and_round_trip():
    c = parse_campaign({**BASE, "order": "shuffled", "seed": 3, "samples": {"ci_width": 0.03}, "repetitions": 2})
    assert (c.order, c.seed, c.samples.ci_width, c.samples.max_launches) == ("shuffled", 3, 0.03, 10)
    assert parse_campaign(c.to_dict()) == c
    assert parse_campaign({**BASE, "samples": {"ci_width": 0.05}, "repetitions": 12}).samples.max_launches == 12
    plain = parse_campaign(BASE)
    assert "samples" not in plain.to_dict() and parse_campaign(plain.to_dict()) == plain
    assert all("samples" not in c.spec() for c in plain.plan([PHONE]))  # ids of campaigns without a target unchanged
    target = parse_campaign({**BASE, "samples": {"ci_width": 0.03, "max_launches": 6}}).plan([PHONE])
    assert target[0].spec()["samples"] == {"ci_width": 0.03, "max_launches": 6}
    assert cell_id(target[0], "a") not in {cell_id(x, "a") for x in plain.plan([PHONE])}  # launches differ: new id
    for bad, key in [
        ({"order": "random"}, "order"),
        ({"seed": -1}, "seed"),
        ({"samples": {"ci_width": 0}}, "samples.ci_width"),
        ({"samples": {"ci_width": 0.03, "max_launches": 3}, "repetitions": 5}, "samples.max_launches"),
        ({"samples": {"max_launches": 3}}, "samples"),
        ({"samples": {"ci": 0.03}}, "samples.ci"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_campaign({**BASE, **bad})
        assert info.value.key == key, bad


# ---------------------------------------------------------------------------------------------------------- pure rules
def _launch(values: list[int]) -> tuple[Step, ...]:
    warm = Step(0, True, 9_000_000, (), None)
    return (warm, *(Step(i + 1, False, v, (), None) for i, v in enumerate(values)))


STEADY = [980_000, 990_000, 1_000_000, 1_010_000, 1_020_000]  # +-2 %: the median's CI narrows as launches add up
NOISY = [500_000, 750_000, 1_000_000, 1_250_000, 1_500_000]  # +-50 %


def test_stop_reason_fixed_repetitions_ci_width_and_cap():
    cell = parse_campaign({**BASE, "repetitions": 2}).plan([PHONE])[0]
    assert stop_reason(cell, []) is None and stop_reason(cell, [_launch(STEADY)]) is None
    assert stop_reason(cell, [_launch(STEADY)] * 2) == ""  # a fixed count says nothing
    aimed = parse_campaign({**BASE, "repetitions": 1, "samples": {"ci_width": 0.03, "max_launches": 6}}).plan([PHONE])[
        0
    ]
    assert stop_reason(aimed, [_launch(STEADY)]) is None  # n = 5: the CI is [min, max], 4 % wide
    assert stop_reason(aimed, [_launch(STEADY)] * 2) is None
    assert stop_reason(aimed, [_launch(STEADY)] * 3) == "ci-width 2.0% <= 3.0% after 3 launches"
    assert stop_reason(aimed, [_launch(NOISY)] * 5) is None
    assert stop_reason(aimed, [_launch(NOISY)] * 6) == "cap 6 launches, width 50.0% > 3.0%"
    assert stop_reason(aimed, [_launch([])] * 6).startswith("cap 6 launches, width inf%")  # no timed steps


def test_set_order_records_then_a_resume_continues_the_recorded_order(tmp_path):
    camp = parse_campaign(BASE)
    st = Store.open(tmp_path, camp)
    got = st.set_order("shuffled", 5, {"A": ["a1", "a2", "a3"], "B": ["b1"]})
    assert got == {"A": ["a1", "a2", "a3"], "B": ["b1"]}
    assert st.order == {"kind": "shuffled", "seed": 5, "devices": got}
    again = Store.open(tmp_path, camp)  # read back from campaign.json
    resumed = again.set_order("interleaved", 0, {"A": ["a3", "a4", "a1"]}, resume=True)
    assert resumed == {"A": ["a1", "a3", "a4"]}  # recorded places kept; a2 no longer planned; a4 new, after them
    doc = json.loads((tmp_path / "o" / "campaign.json").read_text())["order"]
    assert doc == {"kind": "shuffled", "seed": 5, "devices": {"A": ["a1", "a3", "a4"], "B": ["b1"]}}
    fresh = again.set_order("interleaved", 0, {"A": ["x", "y"]}, resume=True)  # nothing recorded is planned
    assert fresh == {"A": ["x", "y"]} and again.order["kind"] == "interleaved"
    assert again.set_order("sequential", 1, {"A": ["y", "x"]}) == {"A": ["y", "x"]}  # no resume: the plan's order
    planned = {"A": [(None, "x", None), (None, "z", None), (None, "y", None)]}
    assert [p[1] for p in follow_order(planned, {"A": ["y", "x"]})["A"]] == ["y", "x", "z"]


# ---------------------------------------------------------------------------------------------------------- end to end
def _legacy(lab):
    return next(p for p in lab if p.profile == "legacy")


def _executed(results: Path) -> list[str]:
    """The cell ids in the order their (last) execution started."""
    cells = load_results(results).drop_duplicates("cell_id").sort_values("started_at")
    return cells["cell_id"].tolist()


def test_interleaved_order_is_recorded_and_an_interrupted_run_resumes_it(lab, tmp_path):
    phone = _legacy(lab)
    toml = campaign_file(tmp_path, [phone.serial], name="abba", steps=3, reps=1)
    results = tmp_path / "results"
    slow = provider(make_artifact(tmp_path, sleep=0.4))
    done = lambda: len(list((results / "abba" / "status").glob("*.json")))  # noqa: E731

    def ctrl_c():
        deadline = time.monotonic() + 120
        while done() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        _thread.interrupt_main()

    threading.Thread(target=ctrl_c, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_campaign(load_campaign(toml), results, slow)
    manifest = json.loads((results / "abba" / "campaign.json").read_text())
    order = manifest["order"]
    assert (order["kind"], order["seed"], list(order["devices"])) == ("interleaved", 0, [phone.serial])
    recorded = order["devices"][phone.serial]
    assert sorted(recorded) == sorted(manifest["plan"])
    status = load_status(results / "abba")
    finished = status.loc[status["status"] == "ok", "cell_id"].tolist()
    assert 2 <= len(finished) < 4 and set(finished) == set(recorded[: len(finished)])  # a prefix of the order
    again = run_campaign(load_campaign(toml), results, provider(make_artifact(tmp_path)), resume=True)
    assert (again.ok, again.resumed, again.failed) == (4 - len(finished), len(finished), 0)
    after = json.loads((results / "abba" / "campaign.json").read_text())["order"]
    assert after == order  # continued, not re-planned
    assert _executed(results / "abba") == recorded
    labels = load_status(results / "abba").set_index("cell_id")["label"].to_dict()
    variants = [labels[c].split("/")[-4].removeprefix("lstm-") for c in recorded]
    governors = [labels[c].split("/")[-2] for c in recorded]
    assert variants == ["full", "unoptimized", "unoptimized", "full"]  # interleaved (ABBA), not full, full, ...
    assert governors == ["interactive", "interactive", "powersave", "powersave"]


def test_a_resume_keeps_the_recorded_shuffle_when_the_seed_changes(lab, tmp_path):
    phone = _legacy(lab)
    toml = campaign_file(tmp_path, [phone.serial], name="shuf", steps=2, reps=1)
    text = toml.read_text()
    toml.write_text('order = "shuffled"\nseed = 1\n' + text)
    results = tmp_path / "results" / "shuf"
    prov = provider(make_artifact(tmp_path))
    out = run_campaign(load_campaign(toml), tmp_path / "results", prov)
    assert out.ok == 4
    recorded = json.loads((results / "campaign.json").read_text())["order"]["devices"][phone.serial]
    assert _executed(results) == recorded
    redo = recorded[:1] + recorded[2:]  # as if those had not finished (status = the commit point)
    for cid in redo:
        (results / "status" / f"{cid}.json").unlink()
    spec = load_campaign(toml).to_dict()

    def redone_in(seed: int) -> list[str]:  # the redone cells in the order a plan with `seed` would run them
        cells = parse_campaign({**spec, "seed": seed}).plan([DeviceRef(phone.serial)])
        return [cid for cid in (cell_id(c, prov(c, "").hash) for c in cells) if cid in redo]

    assert redone_in(1) == redo
    seed = next(s for s in range(2, 200) if redone_in(s) != redo)  # one that would order them otherwise
    toml.write_text(f'order = "shuffled"\nseed = {seed}\n' + text)
    said: list[str] = []
    again = run_campaign(load_campaign(toml), tmp_path / "results", prov, resume=True, log=said.append)
    assert (again.ok, again.resumed) == (3, 1)
    assert any("continuing the recorded order (shuffled, seed 1)" in m for m in said), said
    order = json.loads((results / "campaign.json").read_text())["order"]
    assert (order["kind"], order["seed"], order["devices"][phone.serial]) == ("shuffled", 1, recorded)
    assert _executed(results) == recorded[1:2] + redo  # the kept cell ran first (the first run), then the rest


# a runner double whose timed steps take the five times of VALUES (step i: VALUES[i % 5]), every launch alike
CI_RUNNER = r"""#!/bin/sh
dir=$1; shift; W=1; N=5
while [ $# -gt 0 ]; do case $1 in --warmup) W=$2; shift 2;; --steps) N=$2; shift 2;; *) shift 2;; esac; done
echo '{"runner": {"version": "test-double"}}'
i=0
while [ $i -lt $((W + N)) ]; do
  w=false; [ $i -lt $W ] && w=true
  case $((i % 5)) in 0) ns=V0;; 1) ns=V1;; 2) ns=V2;; 3) ns=V3;; *) ns=V4;; esac
  echo "{\"step\": $i, \"warmup\": $w, \"phases_ns\": {\"forward_backward\": $ns, \"update\": 0}, "\
"\"step_ns\": $ns, \"loss\": 1.0}"
  i=$((i + 1))
done
"""


def _ci_artifact(tmp_path: Path, name: str, values: list[int]) -> Path:
    d = tmp_path / name
    d.mkdir()
    text = CI_RUNNER
    for i, v in enumerate(values):
        text = text.replace(f"V{i}", str(v))
    (d / "runner").write_text(text)
    (d / "runner").chmod(0o755)
    return d


@pytest.mark.parametrize(
    "values, launches, reason",
    [
        (STEADY, 3, "ci-width 2.0% <= 3.0% after 3 launches"),
        (NOISY, 4, "cap 4 launches, width 50.0% > 3.0%"),
    ],
    ids=["steady-reaches-width", "noisy-hits-cap"],
)
def test_a_ci_target_cell_stops_at_the_width_or_at_the_cap_and_says_why(lab, tmp_path, values, launches, reason):
    phone = _legacy(lab)
    toml = campaign_file(
        tmp_path, [phone.serial], name="ci", variants=("full",), governors=("powersave",), steps=5, reps=1
    )
    toml.write_text(toml.read_text() + "[samples]\nci_width = 0.03\nmax_launches = 4\n")
    out = run_campaign(load_campaign(toml), tmp_path / "results", provider(_ci_artifact(tmp_path, "art", values)))
    assert out.ok == 1
    df = load_results(out.results_dir)
    assert df["repetition"].nunique() == launches and (~df["warmup"]).sum() == 5 * launches
    assert set(df["stop_reason"]) == {reason}
    assert load_summaries(out.results_dir)["stop_reason"].tolist() == [reason]
    (cid,) = df["cell_id"].unique()
    status = json.loads((out.results_dir / "status" / f"{cid}.json").read_text())
    assert status["status"] == "ok" and status["extra"]["stop_reason"] == reason
