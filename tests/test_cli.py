"""The `autlearn` command layer: the commands it lists, `cli/` imported by no library package, and the output of
`results show` and `workloads list` (fast: no device, no build)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from autlearn.cli.main import COMMANDS, main
from autlearn.engine.campaign_config import DeviceRef, cell_id, cell_label, parse_campaign, serial_of_label
from autlearn.engine.store import Store, load_status

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("profiler", "workloads", "reports", "testbed")


def test_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in [*COMMANDS, "lab"]:  # lab: the testbed's plugin (entry point)
        assert f"  {name} " in out, name


def test_every_command_module_lives_in_cli():
    assert all(target.startswith("autlearn.cli.") for target in COMMANDS.values())


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_library_package_imports_cli():
    bad = [
        f"{p.relative_to(ROOT)}: {name}"
        for pkg in LIBRARIES
        for p in sorted((ROOT / pkg).rglob("*.py"))
        for name in _imports(p)
        if name == "autlearn.cli" or name.startswith("autlearn.cli.")
    ]
    assert not bad, bad


def test_no_click_outside_cli_but_the_lab_command():
    users = [
        str(p.relative_to(ROOT))
        for pkg in LIBRARIES
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if "click" in _imports(p)
    ]
    assert users == ["testbed/cli.py"], users  # the lab's command, loaded through its entry point


def test_cell_label_round_trip():
    label = cell_label("emu-1", "lstm", "full", 4, "powersave", "all")
    assert label == "emu-1/lstm-full/b4/powersave/all"
    assert serial_of_label(label) == "emu-1" and serial_of_label("no-slash") == ""
    # a cluster phone's serial is HOST/SERIAL: the report once counted its cells for a device "host1"
    remote = cell_label("host1/AAA", "lstm", "full", 4, "powersave", "all")
    assert serial_of_label(remote) == "host1/AAA"


def test_results_show_sorts_rows_by_device_workload_variant_batch_governor(tmp_path, capsys):
    from test_store import meta_for, steps_for

    camp = parse_campaign(
        {
            "name": "t",
            "warmup": 1,
            "steps": 3,
            "repetitions": 1,
            "workload": [
                {"model": "mobilenet", "variants": ["full", "compressed"], "batch": [2, 1]},
                {"model": "lstm", "variants": ["full"], "batch": [1]},
            ],
            "governors": ["powersave", "interactive"],
        }
    )
    cells = camp.plan([DeviceRef("emu-2", "Pixel 4", True), DeviceRef("emu-1", "Pixel 3", True)])
    st = Store.open(tmp_path, camp)
    for c in reversed(cells):
        st.write_cell(meta_for(c, campaign="t", warmup_steps=1), steps_for(c))
    assert main(["results", "show", str(tmp_path / "t"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["summaries"]
    keys = [(r["device_model"], r["workload"], r["variant"], r["batch"], r["governor_requested"]) for r in rows]
    assert len(keys) == len(cells) and keys == sorted(keys)
    assert keys[0] == ("Pixel 3", "lstm", "full", 1, "interactive")
    assert main(["results", "show", str(tmp_path / "t")]) == 0
    table = capsys.readouterr().out
    assert table.index("Pixel 3") < table.index("Pixel 4")
    assert set(load_status(tmp_path / "t")["label"]) == {c.label for c in cells}


def test_workloads_list_with_nothing_built_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["workloads", "list"]) == 0
    out = capsys.readouterr().out
    assert "no artifacts yet" in out and str(tmp_path / "artifacts") in out
    (tmp_path / "artifacts").mkdir()
    assert main(["workloads", "list"]) == 0
    assert "no artifacts yet" in capsys.readouterr().out


def test_set_parser_is_the_library_one():
    from autlearn.cli.options import parse_sets
    from autlearn.profiler.errors import ConfigError
    from autlearn.workloads.models import parse_overrides

    assert (
        parse_sets(("width=0.25", "channels=[8,16]", "name=abc"))
        == parse_overrides(["width=0.25", "channels=[8,16]", "name=abc"])
        == {"width": 0.25, "channels": [8, 16], "name": "abc"}
    )
    with pytest.raises(ConfigError):
        parse_overrides(["width"])


def test_measure_options_build_frozen_settings():
    import dataclasses

    import click
    from click.testing import CliRunner

    from autlearn.cli.options import measure_options
    from autlearn.engine.settings import MeasureSettings

    got = {}

    @click.command()
    @measure_options(rounds=3, energy="none", fixed=("warmup",))
    def cmd(settings):
        got["s"] = settings

    r = CliRunner().invoke(cmd, ["--results", "r", "--resume", "--threads", "2", "--reps", "4", "--steps", "7"])
    assert r.exit_code == 0, r.output
    assert got["s"] == MeasureSettings(
        results_root=Path("r"),
        resume=True,
        threads=2,
        artifacts=None,
        rounds=3,
        repetitions=4,
        steps=7,
        warmup=2,
        energy="none",
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        got["s"].rounds = 1
    assert CliRunner().invoke(cmd, ["--warmup", "1"]).exit_code != 0  # fixed: no option


def test_paths_follow_the_environment(tmp_path, monkeypatch):
    from autlearn.profiler import paths

    monkeypatch.setenv("AUTLEARN_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("AUTLEARN_CACHE_DIR", raising=False)
    monkeypatch.delenv("AUTLEARN_TUNING_DIR", raising=False)
    assert paths.home() == tmp_path / "h" and paths.cache_dir() == tmp_path / "h" / "cache"
    assert paths.artifacts_dir() == tmp_path / "h" / "artifacts" and paths.tuning_dir() == tmp_path / "h" / "tuning"
    assert paths.pending_dir() == tmp_path / "h" / "monsoon-pending" and paths.lab_dir() == tmp_path / "h" / "lab"
    monkeypatch.setenv("AUTLEARN_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("AUTLEARN_TUNING_DIR", str(tmp_path / "t"))
    assert paths.cache_dir() == tmp_path / "c" and paths.tuning_dir() == tmp_path / "t"
    monkeypatch.delenv("AUTLEARN_HOME")
    assert paths.home() == Path.home() / ".autlearn" and paths.home_override() is None


def test_code_fingerprint_hashes_the_listed_build_sources_only(monkeypatch):
    from autlearn.pipelines import artifact_cache

    full = artifact_cache.code_fingerprint()
    assert full == artifact_cache.code_fingerprint()
    assert artifact_cache.code_fingerprint(("compile.py", "nonexistent/*.py")) != full  # missing globs: skipped
    for name in ("artifact.py", "compile.py", "program.py", "runner_build.py", "models.py", "layers.py"):
        assert name in artifact_cache.BUILD_SOURCES
    assert not any("measure" in p or "table_pipeline" in p for p in artifact_cache.BUILD_SOURCES)


def test_results_show_and_the_report_give_wait_beside_harness(tmp_path, capsys):
    """Issue 30: the lab's queueing (wait_s) beside, not inside, the harness's own time; each launch's CPU share."""
    from test_store import meta_for, steps_for

    from autlearn.reports.build import build_report, load_campaign_data, report_json

    camp = parse_campaign(
        {
            "name": "t",
            "warmup": 1,
            "steps": 3,
            "repetitions": 1,
            "workload": [{"model": "lstm", "variants": ["full"], "batch": [1]}],
            "governors": ["powersave"],
        }
    )
    (cell,) = camp.plan([DeviceRef("emu-1", "Pixel 3", True)])
    st = Store.open(tmp_path, camp)
    st.write_cell(
        meta_for(
            cell,
            campaign="t",
            warmup_steps=1,
            harness=(("launch", 1.25),),
            harness_s=1.25,
            wait_s=7.5,
            cpu_share=(0.1221,),
        ),
        steps_for(cell),
    )
    assert main(["results", "show", str(tmp_path / "t"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["summaries"]
    assert (row["harness_s"], row["wait_s"], json.loads(row["cpu_share"])) == (1.25, 7.5, [0.1221])
    assert main(["results", "show", str(tmp_path / "t")]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if "harness_s" in line)
    assert header.index("harness_s") < header.index("wait_s")
    report = build_report(load_campaign_data(tmp_path / "t"))
    assert (report.cells[0].harness_s, report.cells[0].wait_s) == (1.25, 7.5)
    assert report_json(report)["summaries"][0]["wait_s"] == 7.5


def test_run_exits_3_when_a_cell_failed_and_the_summary_starts_its_own_line(tmp_path, monkeypatch, capfd):
    """Issue 31: scripts see failed cells (exit 3, not 1 for bad input); in non-TTY output no line starts with the
    progress table's border (the summary is not glued to it)."""
    from autlearn.cli import campaign as campaign_cli
    from autlearn.cli.campaign import EXIT_CELLS_FAILED
    from autlearn.engine.worker import Outcome, Progress

    def fake_run(campaign, settings, provider, on_progress, log, wait_s=0.0):
        progress = Progress(total={"emu-1": 2}, done={"emu-1": 2}, state={"emu-1": "done"}, finished=True)
        on_progress(progress)
        return Outcome(ok=1, failed=1, skipped=0, resumed=0, results_dir=tmp_path / "r" / "c1")

    monkeypatch.setattr(campaign_cli, "run_campaign", fake_run)  # the engine's run, as the command calls it
    toml = tmp_path / "c.toml"
    toml.write_text('name = "c1"\n[[workload]]\nmodel = "lstm"\n')
    assert main(["run", str(toml), "--results", str(tmp_path / "r")]) == EXIT_CELLS_FAILED == 3
    out, err = capfd.readouterr()
    lines = (err + out).splitlines()
    assert any(line.startswith("c1: 1 ok, 1 failed") for line in lines), lines
    assert not any(line[:1] in "└┘┌┐│├" and "ok," in line for line in lines)
    assert err.endswith("\n")


def test_results_show_and_the_report_say_why_a_cell_has_no_energy(tmp_path, capsys):
    """Issue 31: the reason for missing energy is in the text table and the report, not only in --json; affinity is a
    column (big and little cells differ); a failed cell's multi-line reason is one line."""
    from test_store import meta_for, steps_for

    from autlearn.reports.build import build_report, load_campaign_data

    camp = parse_campaign(
        {
            "name": "t",
            "warmup": 1,
            "steps": 3,
            "repetitions": 1,
            "affinity": ["big", "little"],
            "workload": [{"model": "lstm", "variants": ["full"], "batch": [1]}],
            "governors": ["powersave"],
        }
    )
    big, little = camp.plan([DeviceRef("emu-1", "Pixel 3", True)])
    st = Store.open(tmp_path, camp)
    why = "energy not measured: the phone is charging (USB): the fuel gauge would measure the charger; more"
    st.write_cell(meta_for(big, campaign="t", warmup_steps=1, energy_note=why), steps_for(big))
    st.write_status(cell_id(little, "x"), "failed", "runner failed:\n  sh -c 'a'\n  exit 1", label=little.label)
    assert main(["results", "show", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert "not measured: the phone is" in out and "charging (USB)" in out and "affinity" in out and "big" in out
    assert "runner failed: sh -c 'a' exit 1" in out
    report = build_report(load_campaign_data(tmp_path / "t"))
    assert report.cells[0].energy_reason.startswith("not measured: the phone is charging (USB)")
