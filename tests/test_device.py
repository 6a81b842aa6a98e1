"""The Device seam and the probe, through the real adb server and adbutils, against virtual phones."""

import hashlib
import os
import subprocess
import sys
import threading
import time

import pytest

from autlearn.profiler.device import Device, command, quote
from autlearn.profiler.errors import DeviceCommandFailed, DeviceUnreachable, NotRooted
from autlearn.profiler.probe import probe


@pytest.fixture(scope="module")
def devices(lab, adb_env):
    return {p.profile: Device(p.serial) for p in lab}


def test_shell_exit_codes_and_stderr(devices):
    d = devices["modern"]
    r = d.shell("echo out; echo err >&2; exit 7")
    assert (r.stdout, r.stderr, r.exit_code, r.ok) == ("out\n", "err\n", 7, False)
    with pytest.raises(DeviceCommandFailed) as exc:
        d.check("echo nope >&2; exit 3")
    e = exc.value
    assert (e.serial, e.exit_code, e.command) == (d.serial, 3, "echo nope >&2; exit 3") and "nope" in e.output
    assert "exited 3" in str(e) and d.serial in str(e)


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "two words",
        "it's",
        '"dq"',
        "$(touch /tmp/pwned)",
        "`id`",
        "a;b|c&d",
        "*",
        "new\nline",
        "back\\slash",
        "-n",
    ],
)
def test_every_value_is_quoted(devices, value):
    d = devices["legacy"]
    assert d.check(command("printf", "%s", value)) == value
    assert d.check(f"printf %s {quote(value)}") == value


def test_push_pull_multi_megabyte_identical(devices, tmp_path):
    d = devices["unrooted"]
    data = os.urandom(5 * 1024 * 1024 + 123)
    src, back = tmp_path / "blob.bin", tmp_path / "back.bin"
    src.write_bytes(data)
    remote = f"{d.workdir}/blob.bin"
    d.push(src, remote)
    assert d.check(command("wc", "-c", remote)).split()[0] == str(len(data))
    d.pull(remote, back)
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_workdir_is_under_tmpdir(devices):
    d = devices["modern"]
    tmpdir = d.check('printf %s "$TMPDIR"')
    assert d.workdir == f"{tmpdir}/autlearn" and d.shell(command("test", "-d", d.workdir)).ok


def test_root_modes_per_profile(devices):
    assert devices["legacy"].root_mode == "adbd"  # userdebug build: adb root
    assert devices["modern"].root_mode == "su"  # rooted with su
    assert devices["unrooted"].root_mode == "none"
    assert devices["modern"].shell_root("id -u").stdout.strip() == "0"
    assert devices["modern"].shell("id -u").stdout.strip() == "2000"
    with pytest.raises(NotRooted):
        devices["unrooted"].shell_root("id -u")


def test_probe_every_profile(devices):
    facts = {name: probe(d) for name, d in devices.items()}
    for name, f in facts.items():
        assert f.virtual and f.abi == "x86_64" and f.model.startswith("Virtual"), name
        assert f.cores == sum(len(p.cpus) for p in f.policies) and len(f.policies) >= 2, name
        assert f.thermal and f.battery is not None and f.battery.capacity is not None, name
        assert all(p.governor in p.governors for p in f.policies), name
    assert "interactive" in facts["legacy"].governors
    assert "interactive" not in facts["modern"].governors and "schedutil" in facts["modern"].governors
    assert (facts["legacy"].root, facts["modern"].root, facts["unrooted"].root) == ("adbd", "su", "none")
    assert facts["modern"].clusters == "4+3+1"


def test_three_phones_in_parallel(devices):
    results, errors = {}, []

    def work(name, d):
        try:
            t0 = time.monotonic()
            out = d.check("sleep 1; echo $$")
            results[name] = (out.strip(), time.monotonic() - t0)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    t0 = time.monotonic()
    threads = [threading.Thread(target=work, args=item) for item in devices.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(results) == 3
    assert time.monotonic() - t0 < 2.9  # in parallel, not one after the other (3 x 1 s)


def test_unknown_serial_is_a_typed_error(adb_env):
    with pytest.raises(DeviceUnreachable, match="not known to the adb server"):
        Device("127.0.0.1:1")


def test_phone_dying_mid_command_raises_and_does_not_hang(lab_factory):
    lab, (phone,) = lab_factory(["modern"])
    d = Device(phone.serial)
    killer = threading.Timer(1.0, lab.kill_phone, args=(phone.name,))
    killer.start()
    t0 = time.monotonic()
    with pytest.raises((DeviceUnreachable, DeviceCommandFailed)):
        d.check("sleep 30; echo finished", timeout=60)
    assert time.monotonic() - t0 < 15
    killer.join()


def test_devices_cli_json_lists_the_lab(lab, adb_env):
    import json

    out = subprocess.run(
        [sys.executable, "-m", "autlearn", "devices", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert out.returncode == 0, out.stderr
    fleet = {e["serial"]: e for e in json.loads(out.stdout)}
    for p in lab:
        facts = fleet[p.serial]["facts"]
        assert facts["virtual"] is True and facts["policies"], p.profile


def test_devices_cli_unknown_serial_is_one_line_exit_1(adb_env):
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "autlearn", "devices", "-s", "no-such-phone"],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )
    assert out.returncode == 1
    assert time.monotonic() - t0 < 8, "a serial adb never listed waits 2 s, not the 10 s a dropped device gets"
    assert out.stderr.strip().count("\n") == 0 and "no-such-phone" in out.stderr and "Traceback" not in out.stderr
