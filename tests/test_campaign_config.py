"""Campaign files: validation (typed errors naming the key), plan expansion, stable cell ids, fuzzing."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autlearn.engine.campaign_config import (
    ENERGY_KINDS,
    Campaign,
    DeviceRef,
    EnergySource,
    cell_id,
    load_campaign,
    parse_campaign,
)
from autlearn.profiler.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "examples" / "paper.toml"
VALID = {
    "name": "demo",
    "warmup": 1,
    "steps": 3,
    "repetitions": 2,
    "affinity": ["all", "0xF0"],
    "energy": "fuelgauge",
    "devices": {
        "serials": ["emu-1", "R58M"],
        "models": ["Pixel*"],
        "virtual": True,
        "energy": {"R58M": "monsoon:12345"},
    },
    "workload": [
        {"model": "lstm", "variants": ["full", "cached"], "batch": [1, 16], "config": {"hidden_size": 64}},
        {"model": "mobilenet", "batch": 4, "config": {"width": 0.5, "channels": [8] * 14}},
    ],
    "governors": {"intents": ["interactive", "userspace@1.2GHz"], "fallback": "skip"},
    "cooldown": {"max_temp_c": 40, "timeout_s": 60, "zones": "cpu*"},
}
DEVICES = [
    DeviceRef("emu-1", "Virtual Phone", True),
    DeviceRef("R58M", "SM-G991B", False),
    DeviceRef("P6", "Pixel 6", False),
    DeviceRef("other", "Moto G", False),
]


def errors(data) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_campaign(data)
    return info.value


# ---------------------------------------------------------------------------------------------------------- valid
def test_paper_example_loads():
    c = load_campaign(PAPER)
    assert c.name == "paper" and c.source == str(PAPER)
    assert {w.model for w in c.workloads} == {"lstm", "mobilenet"}
    assert all(w.variants == ("full", "compressed", "unoptimized", "cached") for w in c.workloads)
    assert [str(g) for g in c.governors.intents] == ["interactive", "powersave"]
    assert c.devices.virtual == "allow"
    cells = c.plan(DEVICES)
    assert len(cells) == 4 * 2 * 4 * 2  # devices x workloads x variants x governors (one batch, one affinity)
    assert c.warmup + c.steps <= 10 and c.repetitions <= 3  # demo-sized


def test_valid_campaign_fields_and_round_trip():
    c = parse_campaign(VALID)
    assert c.affinities == ("all", "0xf0")
    assert c.governors.fallback == "skip" and c.governors.intents[1].freq_khz == 1_200_000
    assert c.workloads[0].kwargs == {"hidden_size": 64}
    assert c.workloads[1].kwargs == {"channels": [8] * 14, "width": 0.5}
    assert c.workloads[1].batch == (4,) and c.workloads[1].variants == ("full",)
    assert c.energy_for("R58M") == EnergySource("monsoon", "12345") and str(c.energy_for("emu-1")) == "fuelgauge"
    assert parse_campaign(c.to_dict()) == c
    with pytest.raises(AttributeError):
        c.name = "x"  # frozen
    assert hash(c)


def test_device_selection():
    c = parse_campaign(VALID)
    assert [d.serial for d in c.select(DEVICES)] == ["emu-1", "R58M", "P6"]  # serials plus model globs
    only = parse_campaign({**VALID, "devices": {"virtual": "only"}})
    assert [d.serial for d in only.select(DEVICES)] == ["emu-1"]
    real = parse_campaign({**VALID, "devices": {"virtual": False}})
    assert [d.serial for d in real.select(DEVICES)] == ["R58M", "P6", "other"]
    assert parse_campaign({**VALID, "devices": {"serials": ["gone"]}}).devices.missing(DEVICES) == ("gone",)


def test_plan_and_cell_ids():
    c = parse_campaign(VALID)
    cells = c.plan(DEVICES)
    # devices(3) x [lstm: 2 variants x 2 batches + mobilenet: 1 x 1] x governors(2) x affinities(2)
    assert len(cells) == 3 * (4 + 1) * 2 * 2
    ids = [cell_id(x, "a1") for x in cells]
    assert len(set(ids)) == len(ids) and all(len(i) == 16 for i in ids)
    again = parse_campaign(copy.deepcopy(VALID)).plan(DEVICES)
    assert [cell_id(x, "a1") for x in again] == ids  # stable
    assert cell_id(cells[0], "a2") != ids[0] and cells[0].spec_key == again[0].spec_key
    monsoon = [x for x in cells if x.device_serial == "R58M"]
    assert {x.energy for x in monsoon} == {"monsoon:12345"}
    # a change that alters what is measured changes the id; the description does not
    more = parse_campaign({**VALID, "steps": 4}).plan(DEVICES)
    assert cell_id(more[0], "a1") != ids[0]
    assert cell_id(parse_campaign({**VALID, "description": "x"}).plan(DEVICES)[0], "a1") == ids[0]


def test_defaults():
    c = parse_campaign({"name": "d", "workload": [{"model": "lstm"}]})
    assert (c.warmup, c.steps, c.repetitions, c.affinities, str(c.energy)) == (3, 20, 5, ("all",), "none")
    assert [str(g) for g in c.governors.intents] == ["schedutil"] and c.governors.fallback == "nearest"


# ---------------------------------------------------------------------------------------------------------- invalid
def with_(path: str, value, base=None) -> dict:
    d = copy.deepcopy(base or VALID)
    *parents, last = path.split(".")
    cur = d
    for p in parents:
        cur = cur[int(p)] if isinstance(cur, list) else cur[p]
    if value is DELETE:
        del cur[last]
    else:
        cur[last] = value
    return d


DELETE = object()


@pytest.mark.parametrize(
    "path, value, key, text",
    [
        ("name", "../etc", "name", "directory"),
        ("name", 5, "name", "string"),
        ("name", DELETE, "name", "required"),
        ("bogus", 1, "bogus", "valid keys"),
        ("warmup", -1, "warmup", "between"),
        ("steps", True, "steps", "integer"),
        ("repetitions", 1.5, "repetitions", "integer"),
        ("affinity", ["all", "middle"], "affinity[1]", "big"),
        ("affinity", "0x0", "affinity", "hex"),
        ("energy", "monsoon", "energy", "serial"),
        ("energy", "battery", "energy", "fuelgauge"),
        ("energy", "auto:1", "energy", "only monsoon"),
        ("energy", "monsoon:", "energy", "auto"),
        ("devices.energy", {"R58M": "automatic"}, "devices.energy.R58M", "auto"),
        ("devices.virtual", "maybe", "devices.virtual", "only"),
        ("devices.serials", ["a b"], "devices.serials[0]", "serial"),
        ("devices.serials", ["x", "x"], "devices.serials[1]", "duplicate"),
        ("devices.energy", {"R58M": "volts"}, "devices.energy.R58M", "monsoon"),
        ("devices.colour", "red", "devices.colour", "valid keys"),
        ("workload", [], "workload", "workload"),
        ("workload", DELETE, "workload", "required"),
        ("workload.0.model", "resnet", "workload[0].model", "lstm, mobilenet"),
        ("workload.0.variants", ["full", "tiny"], "workload[0].variants[1]", "unoptimized"),
        ("workload.0.batch", [0], "workload[0].batch[0]", "between"),
        ("workload.0.batch", [1, 1], "workload[0].batch[1]", "duplicate"),
        ("workload.0.config", {"h": {"x": 1}}, "workload[0].config.h", "model arguments"),
        ("workload.0.config", {"h": [[1]]}, "workload[0].config.h[0]", "flat"),
        ("workload.0.config", {"h": math.inf}, "workload[0].config.h", "finite"),
        ("workload.1.epochs", 3, "workload[1].epochs", "valid keys"),
        ("governors.intents", ["turbo"], "governors.intents[0]", "interactive"),
        ("governors.intents", ["userspace"], "governors.intents[0]", "frequency"),
        ("governors.intents", ["userspace@fast"], "governors.intents[0]", "frequency"),
        ("governors.fallback", "closest", "governors.fallback", "nearest, skip, fail"),
        ("cooldown.max_temp_c", "hot", "cooldown.max_temp_c", "number"),
        ("cooldown.max_temp_c", math.nan, "cooldown.max_temp_c", "between"),
        ("cooldown", 5, "cooldown", "table"),
    ],
)
def test_errors_name_the_key(path, value, key, text):
    e = errors(with_(path, value))
    assert e.key == key, str(e)
    assert text in str(e)


def test_governor_shorthand_and_duplicate_workloads():
    assert errors({**VALID, "governors": ["powersave", 3]}).key == "governors[1]"
    e = errors({**VALID, "workload": [{"model": "lstm"}, {"model": "lstm", "variants": ["cached"]}]})
    assert e.key == "workload[1]" and "merge" in str(e)


def test_missing_file_and_syntax_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_campaign(tmp_path / "nope.toml")
    f = tmp_path / "bad.toml"
    f.write_text('name = "x"\n\n[[workload]]\nmodel = lstm\n')
    with pytest.raises(ConfigError) as info:
        load_campaign(f)
    assert f"{f}:4:" in str(info.value) and "syntax" in str(info.value)
    f.write_bytes(b'name = "x"\ndescription = "\xff"\n')
    with pytest.raises(ConfigError, match=r"bad.toml:2: not UTF-8"):
        load_campaign(f)
    f.write_text('name = "x"\n[[workload]]\nmodel = "lstm"\nbatch = [1, "2"]\n')
    with pytest.raises(ConfigError) as info:
        load_campaign(f)
    assert info.value.key == "workload[0].batch[1]" and str(f) in str(info.value)


# ---------------------------------------------------------------------------------------------------------- fuzzing
KEYS = [
    "name",
    "description",
    "warmup",
    "steps",
    "repetitions",
    "affinity",
    "energy",
    "devices",
    "workload",
    "governors",
    "cooldown",
    "serials",
    "models",
    "virtual",
    "model",
    "variants",
    "batch",
    "config",
    "intents",
    "fallback",
    "max_temp_c",
    "timeout_s",
    "zones",
]
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))
scalars = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["lstm", "full", "interactive", "userspace@1GHz", "0xff", "only", "all", "monsoon:1", "none", "nearest"]
    ),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.booleans(),
    st.datetimes(),
    st.dates(),
    st.times(),
)
values = st.recursive(
    scalars, lambda ch: st.lists(ch, max_size=4) | st.dictionaries(keys, ch, max_size=4), max_leaves=12
)


def check(data) -> Campaign | None:
    try:
        return parse_campaign(data)
    except ConfigError as e:
        assert e.key, f"no key named: {e}"
        return None


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, values, max_size=8))
def test_fuzz_random_documents(data):
    check(data)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


ALL_PATHS = [p for p in _paths(VALID) if p]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL_PATHS), st.sampled_from(["replace", "delete", "add"]), values, keys)
def test_fuzz_mutated_valid_documents(path, op, value, new_key):
    data = copy.deepcopy(VALID)
    *parents, last = path
    cur = data
    for p in parents:
        cur = cur[p]
    if op == "replace":
        cur[last] = value
    elif op == "delete":
        del cur[last]
    elif isinstance(cur[last], dict):
        cur[last][new_key] = value
    elif isinstance(cur[last], list):
        cur[last].append(value)
    c = check(data)
    if c is not None:
        assert parse_campaign(c.to_dict()) == c


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.integers(0, 10_000),
            st.sampled_from(["del", "ins", "dup"]),
            st.sampled_from(list('"[]{}=,.\n #x1@') + ["\\", "true", "'''", "\x00", "é"]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_fuzz_mutated_files(tmp_path, edits):
    text = PAPER.read_text()
    for pos, op, s in edits:
        pos %= len(text) + 1
        if op == "del":
            text = text[:pos] + text[pos + 1 :]
        elif op == "ins":
            text = text[:pos] + s + text[pos:]
        else:
            line_start = text.rfind("\n", 0, pos) + 1
            line_end = text.find("\n", pos)
            line_end = len(text) if line_end < 0 else line_end + 1
            text = text[:line_end] + text[line_start:line_end] + text[line_end:]
    f = tmp_path / "fuzz.toml"
    f.write_text(text)
    try:
        load_campaign(f)
    except ConfigError as e:
        assert e.key or (f"{f}:" in str(e) and ("syntax" in str(e) or "UTF-8" in str(e))), str(e)


def test_energy_auto_globally_and_per_device():
    """`auto` (the phone's Monsoon if one is known, else the fuel gauge) and `monsoon:auto` (that Monsoon, an error
    if none) parse, round-trip and reach the cells unresolved: resolution happens per device when the cell runs."""
    data = copy.deepcopy(VALID)
    data["energy"] = "auto"
    data["devices"]["energy"] = {"R58M": "monsoon:auto", "emu-1": "none"}
    c = parse_campaign(data)
    assert c.energy == EnergySource("auto") and str(c.energy) == "auto"
    assert c.energy_for("R58M") == EnergySource("monsoon", "auto") and str(c.energy_for("R58M")) == "monsoon:auto"
    assert str(c.energy_for("emu-1")) == "none" and str(c.energy_for("other")) == "auto"
    assert parse_campaign(c.to_dict()) == c
    assert "auto" in ENERGY_KINDS


# ------------------------------------------------------------------------------------- complete, bounded validation
def test_huge_files_and_free_text_are_refused(tmp_path):
    big = tmp_path / "big.toml"
    with open(big, "wb") as f:  # sparse: 50 MB that are never read
        f.truncate(50 << 20)
    with pytest.raises(ConfigError, match="limit is 1048576"):
        load_campaign(big)
    data = copy.deepcopy(VALID)
    data["description"] = "x" * 5000
    assert errors(data).key == "description"
    data = copy.deepcopy(VALID)
    data["workload"][0]["config"]["hidden_size"] = "9" * 1000
    assert errors(data).key == "workload[0].config.hidden_size"


@pytest.mark.parametrize(
    "config, key",
    [
        ({"hidden_size": "64"}, "workload[0].config.hidden_size"),  # a wrong type inside the model config
        ({"hidden_size": 64.5}, "workload[0].config.hidden_size"),
        ({"hidden": 64}, "workload[0].config"),  # an unknown model argument
        ({"hidden_size": 0}, "workload[0].config.hidden_size"),  # the family's own range check
        ({"hidden_size": 1_000_000_000}, "workload[0].config.hidden_size"),  # over its ceiling (issue 31)
        ({"vocab_size": 1_000_000, "hidden_size": 8192}, "workload[0].config.model"),  # too many parameters
        ({"tuning": "fast"}, "workload[0].config.tuning"),
        ({"batch": 4}, "workload[0].config.batch"),
        ({"compressed": "/no/such/compressed.json"}, "workload[0].config.compressed"),
    ],
)
def test_model_config_is_checked_against_its_family_before_anything_runs(config, key):
    data = copy.deepcopy(VALID)
    data["workload"][0]["config"] = config
    assert errors(data).key == key


@pytest.mark.parametrize(
    "model, config, key",
    [("mobilenet", 'width = "wide"', "width"), ("lstm", "hidden_size = 1000000000", "hidden_size")],
)
def test_a_bad_model_config_is_one_line_and_leaves_no_results(tmp_path, model, config, key):
    import subprocess
    import sys

    p = tmp_path / "c.toml"
    p.write_text(f'name = "bad"\n[[workload]]\nmodel = "{model}"\nconfig = {{ {config} }}\n')
    r = subprocess.run(
        [sys.executable, "-m", "autlearn", "run", str(p), "--results", str(tmp_path / "res")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"workload[0].config.{key}" in r.stderr and not (tmp_path / "res").exists()


_scalar = st.one_of(st.integers(-5, 5000), st.floats(allow_nan=True), st.text(max_size=8), st.booleans())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["lstm", "mobilenet"]),
    st.dictionaries(
        st.sampled_from(
            [
                "hidden_size",
                "vocab_size",
                "width",
                "channels",
                "image_size",
                "seed",
                "num_classes",
                "tuning",
                "compressed",
                "batch",
                "seq_len",
                "nope",
            ]
        ),
        st.one_of(_scalar, st.lists(_scalar, max_size=16), st.dictionaries(st.text(max_size=3), _scalar, max_size=2)),
        max_size=4,
    ),
)
def test_fuzzed_model_config_tables_give_a_campaign_or_one_config_error(model, config):
    data = copy.deepcopy(VALID)
    data["workload"] = [{"model": model, "batch": [2], "config": config}]
    try:
        c = parse_campaign(data)
    except ConfigError as e:
        assert e.key.startswith("workload[0]") and "\n" not in str(e)
    else:
        from autlearn.workloads.models import make_config

        kwargs = {k: v for k, v in c.workloads[0].kwargs.items() if k != "tuning"}
        make_config(model, **kwargs, batch=2)  # what was accepted builds a config
