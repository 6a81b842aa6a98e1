"""Issue 21 without a cluster: how campaigns name phones of several hosts, and that the default path never imports
Ray."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

from autlearn.engine.campaign_config import parse_campaign


def _phone(serial: str, model: str = "Pixel"):
    return SimpleNamespace(serial=serial, model=model, virtual=False)


def test_a_campaign_may_name_a_phone_by_serial_or_host_slash_serial():
    fleet = [_phone("host1/AAA"), _phone("host2/BBB"), _phone("host2/CCC")]
    c = parse_campaign(
        {
            "name": "x",
            "workload": [{"model": "lstm"}],
            "energy": "fuelgauge",
            "devices": {"serials": ["AAA", "host2/BBB"], "energy": {"AAA": "none"}},
        }
    )
    assert [d.serial for d in c.select(fleet)] == ["host1/AAA", "host2/BBB"]
    assert c.devices.missing(fleet) == ()
    assert str(c.energy_for("host1/AAA")) == "none" and str(c.energy_for("host2/BBB")) == "fuelgauge"
    gone = parse_campaign({"name": "x", "workload": [{"model": "lstm"}], "devices": {"serials": ["host3/AAA"]}})
    assert gone.devices.missing(fleet) == ("host3/AAA",)


def test_no_ray_import_on_the_default_path():
    code = (
        "import sys, autlearn.engine.campaign, autlearn.pipelines.measure, autlearn.cli.campaign, autlearn.cli.main\n"
        "from autlearn.engine.campaign import fleet_for\nfrom autlearn.engine.settings import MeasureSettings\n"
        "fleet_for(MeasureSettings())\n"
        "try:\n    autlearn.cli.main.main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
