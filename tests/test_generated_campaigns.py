"""Campaigns the pipelines generate (autlearn.pipelines.generated), without a device: typed from the serial to the
engine's Campaign, named by a digest of their settings (the names results directories always had), and checked
as a campaign file is before anything runs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from autlearn.cli.main import main
from autlearn.engine.campaign_config import DeviceRef, parse_campaign
from autlearn.engine.settings import MeasureSettings
from autlearn.pipelines.closed_loop import LoopSettings
from autlearn.pipelines.generated import workload_of
from autlearn.pipelines.measure import models_campaign
from autlearn.pipelines.tables import plan_device_tables, table_campaign
from autlearn.profiler.errors import ConfigError
from autlearn.workloads.layers import table_grid
from autlearn.workloads.models import make_config

TINY = dict(channels=(8, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16), num_classes=10, batch=16, image_size=56)
CFG = make_config("mobilenet", **TINY)
SMALL = make_config("mobilenet", **{**TINY, "width": 0.5})
LSTM = make_config("lstm", vocab_size=1000, embed_dim=16, hidden_size=256, seq_len=4, batch=2)


def test_names_are_those_results_directories_already_have():
    # names made by the dict-built campaigns before typed ones (results written then resume under the same name)
    s = MeasureSettings(repetitions=1, steps=10, warmup=2, energy="auto")
    assert table_campaign("mobilenet", CFG, "emulator-5554", ("interactive", "powersave"), 1, 2, s).name == (
        "tables-mobilenet-bb1a77d87b"
    )
    s = MeasureSettings(repetitions=1, steps=5, energy="none")
    assert table_campaign("lstm", LSTM, "host1/R58M", ("powersave",), 1, 1, s).name == "tables-lstm-8d1f19e145"
    models = {"a": workload_of(SMALL), "b": workload_of(CFG), "c": workload_of(SMALL)}
    s = MeasureSettings(repetitions=2, steps=10, warmup=2, energy="none")
    m = models_campaign("validate-mobilenet-interactive", models, "emulator-5554", "interactive", s)
    assert m.name == "validate-mobilenet-interactive-20eb1557ad" and len(m.workloads) == 2  # equal ones once
    s = MeasureSettings(repetitions=1, steps=20, warmup=3, energy="none")
    m = models_campaign("pruned-out/x y-0", {"a": workload_of(LSTM)}, "emulator-5556", "schedutil", s)
    assert m.name == "pruned-out_x_y-0-26f72aa9a1"


@pytest.mark.parametrize("serial", ["emulator-5554", "host1/R58M-interactive-r0", "192.168.1.7:5555"])
def test_the_serial_stays_a_serial(serial):
    plan = plan_device_tables(
        "mobilenet", CFG, table_grid(CFG), serial, ["interactive", " powersave"], 4, 48, MeasureSettings()
    )
    assert plan.device == serial and plan.governors == ("interactive", "powersave")
    one = plan.campaign.for_governor("powersave").with_control(workload_of(CFG))
    c = one.campaign("-r3")
    assert c.name == f"{plan.campaign.name}-powersave-r3" and c.devices.serials == (serial,)
    assert [str(g) for g in c.governors.intents] == ["powersave"] and c.workloads[0] == workload_of(CFG)
    assert {cell.device_serial for cell in c.plan([DeviceRef(serial, "Pixel", True)])} == {serial}
    # what a campaign file with the same content gives
    assert parse_campaign(c.to_dict(), source="generated") == c


def test_settings_are_in_the_name_and_bad_ones_fail_before_anything_runs():
    a = table_campaign("mobilenet", CFG, "s1", ("interactive",), 2, 1, MeasureSettings())
    assert a.name != table_campaign("mobilenet", CFG, "s2", ("interactive",), 2, 1, MeasureSettings()).name
    assert a.name != table_campaign("mobilenet", CFG, "s1", ("interactive",), 2, 1, MeasureSettings(steps=11)).name
    with pytest.raises(ConfigError) as e:
        plan_device_tables("mobilenet", CFG, table_grid(CFG), "bad serial", ["interactive"], 4, 48, MeasureSettings())
    assert e.value.key == "devices.serials[0]"
    with pytest.raises(ConfigError) as e:
        replace(a, energy="joules").campaign()
    assert e.value.key == "energy"
    with pytest.raises(ConfigError) as e:
        replace(a, governors=("userspace@fast",)).campaign()
    assert e.value.key == "governors[0]"


def test_loop_settings_are_checked():
    assert LoopSettings("emulator-5554").corrections == 2
    for kwargs, key in (
        ({"margin": 0.5}, "margin"),
        ({"corrections": -1}, "corrections"),
        ({"verdict_on": "x"}, "verdict_on"),
    ):
        with pytest.raises(ConfigError) as e:
            LoopSettings(**kwargs)
        assert e.value.key == key


def test_prune_options_arrive_as_settings(tmp_path, capsys):
    assert main(["prune", "--budget", "flops=2M", "--out", str(tmp_path), "--margin", "0.7"]) == 1
    assert "margin" in capsys.readouterr().err
