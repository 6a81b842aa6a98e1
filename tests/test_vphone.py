"""Virtual phones driven through the real adb server, real adbutils and the real adb CLI."""

from __future__ import annotations

import io
import os
import shlex
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import adbutils
import pytest

from autlearn.testbed.profiles import load_profile

PROFILES = ("legacy", "modern", "unrooted")


def _tmpdir(dev) -> str:
    return dev.shell("echo $TMPDIR")


def test_adb_lists_the_phones_with_their_models(lab, adb_env):
    out = adb_env.run("devices", "-l").stdout.decode()
    for phone in lab:
        line = next(ln for ln in out.splitlines() if ln.startswith(phone.serial))
        assert line.split()[1] == "device"
        assert f"device:v{phone.profile}" in line
    assert "model:Virtual_Legacy" in out


@pytest.mark.parametrize("profile", PROFILES)
def test_shell_v2_exit_code_and_separate_stderr(lab_device, profile):
    r = lab_device(profile).shell2("echo out; echo err >&2; exit 7", v2=True, rstrip=True)
    assert (r.returncode, r.stdout, r.stderr) == (7, "out", "err")


def test_shell_v1_merges_output_and_reports_exit_code_via_adbutils_marker(lab_device):
    dev = lab_device("legacy")
    assert dev.shell("echo one; echo two >&2") == "one\ntwo"
    r = dev.shell2("echo hi; false", rstrip=True)  # adbutils' v1 path appends `; echo X4EXIT:$?`
    assert (r.returncode, r.output) == (1, "hi")


def test_adb_cli_shell_separates_streams_and_exit_code(lab, adb_env):
    r = adb_env.run("-s", lab[0].serial, "shell", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"out\n", b"err\n")


def test_adb_cli_shell_forwards_stdin(lab, adb_env):
    r = adb_env.run("-s", lab[1].serial, "shell", "cat; echo done", input=b"hello\x00bytes\n")
    assert r.returncode == 0 and r.stdout == b"hello\x00bytes\ndone\n"


def test_exec_out_is_binary_clean(lab, adb_env, lab_device):
    data = bytes(range(256)) * 4
    dev = lab_device("unrooted")
    dev.sync.push(io.BytesIO(data), "/data/local/tmp/bin.dat")
    r = adb_env.run("-s", dev.serial, "exec-out", "cat $TMPDIR/bin.dat")
    assert r.stdout == data


def test_shell_sees_the_android_environment(lab_device):
    dev = lab_device("modern")
    env = dict(line.split("=", 1) for line in dev.shell("env").splitlines() if "=" in line)
    root = env["AUTLEARN_ROOT"]
    assert env["TMPDIR"] == f"{root}/data/local/tmp" == env["HOME"]
    assert env["AUTLEARN_SYSFS"] == f"{root}/sys"
    assert env["PATH"].startswith(f"{root}/system/bin:")
    assert dev.shell("pwd") == root
    assert "MIRBSD KSH" in dev.shell("echo $KSH_VERSION") or not os.path.exists("/usr/bin/mksh")


def as_shell_user(dev, adb_env, timeout=15.0):
    """Session phones are shared: another test may have left adbd rooted (as a campaign does). Undo that."""
    if dev.shell("id -u") != "0":
        return
    adb_env.run("-s", dev.serial, "unroot")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if dev.shell("id -u") == "2000":
                return
        except Exception:  # noqa: BLE001 - adbd "restarting"
            pass
        time.sleep(0.2)
    raise AssertionError(f"{dev.serial} did not go back to the shell user")


@pytest.mark.parametrize("profile", PROFILES)
def test_getprop_id_uname_shims(lab_device, adb_env, profile):
    p = load_profile(profile)
    dev = lab_device(profile)
    as_shell_user(dev, adb_env)
    assert dev.shell("getprop ro.autlearn.virtual") == "1"
    assert dev.getprop("ro.product.model") == p.model
    assert dev.shell("getprop ro.build.version.sdk") == str(p.sdk)
    assert dev.shell("getprop ro.product.cpu.abi") == "x86_64"
    assert dev.shell("getprop ro.board.platform") == p.board_platform
    assert dev.shell("getprop no.such.prop fallback") == "fallback"
    assert dev.shell2("getprop no.such.prop", v2=True, rstrip=True).stdout == ""
    listing = dev.shell("getprop")
    assert "[ro.autlearn.virtual]: [1]" in listing and f"[ro.product.model]: [{p.model}]" in listing
    assert dev.shell("id -u") == "2000" and dev.shell("id -un") == "shell"
    assert dev.shell("id").startswith("uid=2000(shell) gid=2000(shell)")
    assert dev.shell("uname -r") == p.kernel_release


@pytest.mark.skipif(not shutil.which("toybox"), reason="without toybox the phone shell uses the host's /usr/bin")
def test_android_like_tool_set(lab_device):
    for profile in ("legacy", "unrooted"):
        assert lab_device(profile).shell("command -v su; command -v python3; command -v bash; echo end") == "end"
    dev = lab_device("modern")
    assert dev.shell("command -v su").endswith("/system/bin/su")
    assert dev.shell("command -v ls").endswith("/system/toybox/ls")
    assert dev.shell("echo abc | tr a-c A-C; echo 3 4 | awk '{print $1 * $2}'") == "ABC\n12"


def test_soc_props_only_on_android_12_and_later(lab_device):
    assert lab_device("modern").shell("getprop ro.soc.model") == "VSM8350"
    assert lab_device("legacy").shell("getprop ro.soc.model") == ""


@pytest.mark.parametrize("profile", PROFILES)
def test_sysfs_tree_matches_the_profile(lab_device, profile):
    p = load_profile(profile)
    dev = lab_device(profile)
    sysfs = dev.shell("echo $AUTLEARN_SYSFS")
    cpu = f"{sysfs}/devices/system/cpu"
    assert dev.shell(f"cat {cpu}/possible {cpu}/online") == "0-7\n0-7"
    assert dev.shell(f"ls {cpu}/cpufreq").split() == [f"policy{c.cpus[0]}" for c in p.clusters]
    for c in p.clusters:
        pol = f"{cpu}/cpufreq/policy{c.cpus[0]}"
        assert dev.shell(f"cat {pol}/scaling_available_governors").split() == list(c.governors)
        assert dev.shell(f"cat {pol}/scaling_governor") == c.governor
        assert dev.shell(f"cat {pol}/cpuinfo_max_freq") == str(c.freqs_khz[-1])
        assert dev.shell(f"cat {pol}/related_cpus").split() == [str(x) for x in c.cpus]
        assert dev.shell(f"cat {cpu}/cpu{c.cpus[-1]}/cpufreq/scaling_max_freq") == str(c.freqs_khz[-1])
    temps = dev.shell(f"cat {sysfs}/class/thermal/thermal_zone*/temp").split()
    assert len(temps) == len(p.thermal_zones) and all(10000 < int(t) < 90000 for t in temps)
    assert dev.shell(f"cat {sysfs}/class/thermal/cooling_device0/max_state") == str(p.cooling_devices[0].max_state)
    bat = f"{sysfs}/class/power_supply"
    assert dev.shell(f"cat {bat}/battery/capacity {bat}/usb/online") == f"{p.battery.capacity}\n1"
    # sync maps Android absolute paths into the sandbox
    assert dev.sync.read_text("/sys/class/power_supply/battery/status").strip() == p.battery.status


def test_governor_write_read_and_invalid_write_is_reverted(lab_device):
    dev = lab_device("legacy")
    pol = dev.shell("echo $AUTLEARN_SYSFS") + "/devices/system/cpu/cpufreq/policy4"
    try:
        r = dev.shell2(f"echo performance > {pol}/scaling_governor && cat {pol}/scaling_governor", v2=True, rstrip=True)
        assert (r.returncode, r.stdout) == (0, "performance")
        deadline = time.monotonic() + 3
        while dev.shell(f"cat {pol}/scaling_cur_freq") != dev.shell(f"cat {pol}/scaling_max_freq"):
            assert time.monotonic() < deadline, "scaling_cur_freq does not follow the performance governor"
            time.sleep(0.05)
        dev.shell(f"echo schedutil > {pol}/scaling_governor")  # not offered by a 3.18 kernel
        deadline = time.monotonic() + 3
        while dev.shell(f"cat {pol}/scaling_governor") != "performance":
            assert time.monotonic() < deadline, "invalid governor was not reverted"
            time.sleep(0.05)
    finally:
        dev.shell(f"echo interactive > {pol}/scaling_governor")


def test_push_pull_8mb_byte_identical_with_adbutils(lab_device, tmp_path):
    dev = lab_device("modern")
    data = os.urandom(8 * 1024 * 1024)
    remote = _tmpdir(dev) + "/big/nested/blob.bin"  # parents are created (fixed_push_mkdir)
    assert dev.sync.push(data, remote, mode=0o640) == len(data)
    assert dev.shell(f"stat -c %a:%s {remote}") == f"640:{len(data)}"
    assert dev.sync.read_bytes(remote) == data
    local = tmp_path / "back.bin"
    dev.sync.pull(remote, local)
    assert local.read_bytes() == data
    dev.shell(f"rm -r {_tmpdir(dev)}/big")


def test_push_pull_8mb_byte_identical_with_adb_cli(lab, adb_env, tmp_path):
    serial = lab[0].serial
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(8 * 1024 * 1024))
    os.chmod(src, 0o751)
    os.utime(src, (1_600_000_000, 1_600_000_000))
    r = adb_env.run("-s", serial, "push", str(src), "/data/local/tmp/cli/src.bin")
    assert r.returncode == 0, r.stderr
    r = adb_env.run("-s", serial, "pull", "/data/local/tmp/cli/src.bin", str(tmp_path / "dst.bin"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "dst.bin").read_bytes() == src.read_bytes()
    dev = adb_env.client().device(serial)
    # /data/local/tmp on the wire is $TMPDIR in the shell; mode bits and mtime were honoured
    assert dev.shell("stat -c %a:%Y $TMPDIR/cli/src.bin") == "751:1600000000"
    dev.shell("rm -r $TMPDIR/cli")


def test_sync_stat_and_list(lab_device, adb_env):
    dev = lab_device("unrooted")
    tmp = _tmpdir(dev)
    dev.shell(f"mkdir -p {tmp}/lst/sub && printf abc > {tmp}/lst/f.txt")
    st = dev.sync.stat(f"{tmp}/lst/f.txt")
    assert st.size == 3 and st.mode & 0o170000 == 0o100000
    assert dev.sync.stat("/data/local/tmp/lst/f.txt").size == 3  # Android path, same file
    assert dev.sync.stat(f"{tmp}/missing").mtime is None and not dev.sync.exists(f"{tmp}/missing")
    names = {f.path: f for f in dev.sync.list(f"{tmp}/lst")}
    assert set(names) == {".", "..", "sub", "f.txt"} and names["f.txt"].size == 3
    out = adb_env.run("-s", dev.serial, "ls", f"{tmp}/lst").stdout.decode()  # adb ls (LIS2 with ls_v2)
    assert {ln.split()[-1] for ln in out.splitlines()} == {".", "..", "sub", "f.txt"}
    dev.shell(f"rm -r {tmp}/lst")


def test_sync_refuses_paths_outside_the_sandbox(lab_device, adb_env):
    dev = lab_device("legacy")
    with pytest.raises(adbutils.AdbError):
        dev.sync.read_bytes("/etc/hostname")
    with pytest.raises(adbutils.AdbError):
        dev.sync.read_bytes("/data/../../../../etc/hostname")
    assert dev.sync.stat("/etc/hostname").mtime is None
    r = adb_env.run("-s", dev.serial, "push", __file__, "/etc/evil.py")
    assert r.returncode != 0 and not os.path.exists("/etc/evil.py")


def test_unknown_service_is_refused_and_the_phone_lives_on(lab, adb_env):
    dev = adb_env.client().device(lab[2].serial)
    with pytest.raises(adbutils.AdbError):
        with dev.open_transport() as c:
            c.send_command("reboot:bootloader")
            c.check_okay()
            if not c.read_until_close():
                raise adbutils.AdbError("closed")
    assert dev.shell("echo alive") == "alive"


def test_concurrent_streams_on_one_phone(lab_device):
    dev = lab_device("modern")
    t0 = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(lambda i: dev.shell2(f"sleep 0.5; echo {i}", v2=True, rstrip=True).stdout, range(6)))
    assert outs == [str(i) for i in range(6)]
    assert time.monotonic() - t0 < 2.5  # in parallel, not one after the other


def test_three_phones_in_parallel(lab, adb_env):
    def work(phone):
        dev = adb_env.client().device(phone.serial)
        blob = os.urandom(1024 * 1024)
        path = f"/data/local/tmp/par-{phone.name}.bin"
        dev.sync.push(blob, path)
        r = dev.shell2(f"md5sum < $TMPDIR/par-{phone.name}.bin; getprop ro.autlearn.profile", v2=True, rstrip=True)
        back = dev.sync.read_bytes(path)
        dev.shell(f"rm $TMPDIR/par-{phone.name}.bin")
        return r.returncode, r.stdout.split()[-1], back == blob

    with ThreadPoolExecutor(len(lab)) as pool:
        results = list(pool.map(work, lab))
    assert results == [(0, p.profile, True) for p in lab]


def _host_pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_shell_whose_client_goes_away_is_killed_with_its_children(lab_device):
    dev = lab_device("unrooted")
    tag = f"{os.getpid() % 1000}{time.monotonic_ns() % 100000}"
    marker = f"sleep 6{tag}"  # unique durations identify the processes on the host
    # a background child in the same process group must die too
    conn = dev.shell(f"sleep 6{tag} & sleep 6{tag}; echo never", stream=True)
    deadline = time.monotonic() + 5
    while len(_host_pids(marker)) < 2:
        assert time.monotonic() < deadline, "device shell did not start"
        time.sleep(0.05)
    conn.close()
    deadline = time.monotonic() + 5
    while _host_pids(marker):
        assert time.monotonic() < deadline, "processes of a closed shell survived"
        time.sleep(0.05)


def test_adb_shell_interrupted_by_timeout_does_not_hang(lab_device):
    dev = lab_device("legacy")
    t0 = time.monotonic()
    with pytest.raises(adbutils.AdbTimeout):
        dev.shell("sleep 20", timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert dev.shell("echo fine") == "fine"


def test_quoting_survives_the_shell(lab_device):
    dev = lab_device("modern")
    tricky = "a b 'c' \"d\" $HOME `x` ; & | *"
    assert dev.shell2(f"printf %s {shlex.quote(tricky)}", v2=True, rstrip=True).stdout == tricky


def test_several_adb_servers_can_attach_to_one_phone(lab, adb_env, tmp_path):
    """Two host connections at once (a second private adb server)."""
    port2 = adb_env.port + 1 if adb_env.port < 65000 else adb_env.port - 1
    env2 = {**os.environ, "ANDROID_ADB_SERVER_PORT": str(port2)}
    with open(tmp_path / "adb2.log", "wb") as log:
        subprocess.run(
            [adb_env.adb, "start-server"],
            env=env2,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=60,
        )
    try:
        out = subprocess.run(
            [adb_env.adb, "connect", lab[0].serial], env=env2, capture_output=True, text=True, timeout=30
        ).stdout
        assert "connected to" in out
        client2 = adbutils.AdbClient(port=port2)
        client2.wait_for(lab[0].serial, state="device", timeout=10)
        done = threading.Event()

        def first():
            adb_env.client().device(lab[0].serial).shell("sleep 0.3")
            done.set()

        t = threading.Thread(target=first)
        t.start()
        assert client2.device(lab[0].serial).shell("echo second") == "second"
        t.join(10)
        assert done.is_set()
    finally:
        subprocess.run([adb_env.adb, "kill-server"], env=env2, capture_output=True, timeout=30)
