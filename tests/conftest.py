"""Shared fixtures: a private adb server, a session lab of three virtual phones, and a lab factory.

- Every test session gets its own AUTLEARN_HOME (temp dir) and its own ANDROID_ADB_SERVER_PORT, so nothing touches
  ~/.autlearn or the developer's adb server on 5037.
- `adb_env`: starts the private adb server (killed at session end). Has `.adb`, `.port`, `.home`, `.client()`,
  `.run(*args)` (the adb CLI against the private server).
- `lab`: three phones [legacy, modern, unrooted] (list of PhoneInfo: name, serial, profile, port, root, pid) shared
  by the whole session. Their profiles' default governors, no keep-warm spinners (testbed/dvfs.py: they make
  governor ratios exact and cost unthrottled runs ~30 % on a 2-vCPU VM; test_dvfs's own lab keeps them). Do not
  root them or unplug them: use `lab_factory` for that. Restore what you change.
- `lab_device(profile)`: the adbutils device of the session phone with that profile.
- `lab_factory(profiles=("legacy",))`: fresh phones for one test -> (Lab, [PhoneInfo]), their profiles' default
  governors, no keep-warm spinners; torn down after the test.
- Toolchain prebuild: when the session will link arm64 runners, a background thread builds their TVM runtime and
  zig's aarch64 libc/libc++ (`runner_build.prepare`, nice'd) while other tests run; on a clean machine that is
  about four minutes the arm64 tests no longer wait for. Cached: a second. The tests wait on the build's locks.
  Modules that link runners run last, so the build overlaps with the tests that do not.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from autlearn.testbed.lab import DEFAULT_PROFILES, Lab, PhoneInfo, find_adb, find_free_ports

_ENV_KEYS = ("AUTLEARN_HOME", "ANDROID_ADB_SERVER_PORT", "ADB_LIBUSB", "AUTLEARN_BUILD_JOBS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class AdbEnv:
    adb: str
    port: int
    home: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "ANDROID_ADB_SERVER_PORT": str(self.port)}

    def client(self):
        import adbutils

        return adbutils.AdbClient(port=self.port)

    def run(self, *args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """The real adb CLI against the private server; output as bytes."""
        return subprocess.run(
            [self.adb, *args],
            env=self.env(),
            input=input,
            capture_output=True,
            stdin=None if input is not None else subprocess.DEVNULL,
            timeout=timeout,
        )


def pytest_configure(config):
    """Before collection (so even module-level adbutils clients see it): private AUTLEARN_HOME and adb port."""
    config._autlearn_saved_env = {k: os.environ.get(k) for k in _ENV_KEYS}
    config._autlearn_home = tempfile.mkdtemp(prefix="autlearn-test-home-")
    os.environ["AUTLEARN_HOME"] = config._autlearn_home
    os.environ["ANDROID_ADB_SERVER_PORT"] = str(_free_port())
    os.environ["ADB_LIBUSB"] = "0"  # the private server starts in 0.1 s instead of 3 s (libusb init)
    # while the toolchain prebuild runs it holds a core of a 2-core CI machine: campaigns build artifacts one at a
    # time until it is done (parallel builds measured slower then), then one per core (`_release_build_jobs`)
    config._autlearn_jobs_pinned = "AUTLEARN_BUILD_JOBS" not in os.environ
    os.environ.setdefault("AUTLEARN_BUILD_JOBS", "1")


def test_cache_dir() -> Path:
    """The tests' persistent build cache (the session's AUTLEARN_HOME is a temp dir)."""
    return Path(os.environ.get("AUTLEARN_TEST_CACHE_DIR") or Path.home() / ".cache" / "autlearn-test")


test_cache_dir.__test__ = False  # a helper, not a test


@pytest.fixture(scope="session")
def runner_cache():
    """A persistent build cache shared across test sessions (the session's AUTLEARN_HOME is a temp dir)."""
    path = test_cache_dir()
    saved = os.environ.get("AUTLEARN_CACHE_DIR")
    os.environ["AUTLEARN_CACHE_DIR"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("AUTLEARN_CACHE_DIR", None)
    else:
        os.environ["AUTLEARN_CACHE_DIR"] = saved


# Modules whose tests link runners (they wait on the toolchain build): run after the others, so that on a clean
# machine the background prebuild overlaps with tests that do not need it.
_LINKS_RUNNERS = (
    "test_artifact.py",
    "test_runner.py",
    "test_energy_campaign.py",
    "test_cluster.py",
    "test_example_campaign.py",
    "test_interrupt.py",
    "test_tables_device.py",
    "test_metaschedule.py",
    "test_dvfs.py",
    "test_packaging.py",
    "test_pins.py",
)
# Modules that compare step times (virtual phones' time scale): last of all, when the prebuild no longer loads the
# host's two cores.
_TIMED_LAST = ("test_pins.py", "test_dvfs.py")


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: only sessions that run an arm64 test
def pytest_collection_modifyitems(config, items):
    # stable: file order kept within each group
    items.sort(key=lambda item: (item.path.name in _LINKS_RUNNERS, item.path.name in _TIMED_LAST))
    if config.option.collectonly or len(items) < 20 or not any("arm64" in item.nodeid for item in items):
        return _release_build_jobs(config)
    if not (shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")):
        return _release_build_jobs(config)

    def prebuild():
        from autlearn.workloads.runner_build import prepare

        try:
            for abi in ("x86_64", "arm64-v8a"):  # x86_64 first: the first tests need it (shared locks)
                prepare(abi, cache=test_cache_dir())
        except Exception:  # the tests build again and report the error themselves
            pass

    config._autlearn_prebuild = threading.Thread(target=prebuild, name="autlearn-prebuild", daemon=True)
    config._autlearn_prebuild.start()


def _release_build_jobs(config) -> None:
    """No prebuild holds a core (none started, or it finished): artifact builds go back to one per core."""
    if getattr(config, "_autlearn_jobs_pinned", False):
        config._autlearn_jobs_pinned = False
        os.environ.pop("AUTLEARN_BUILD_JOBS", None)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    prebuild = getattr(item.config, "_autlearn_prebuild", None)
    if prebuild is not None and not prebuild.is_alive():  # checked on the main thread, before each test
        _release_build_jobs(item.config)


def pytest_unconfigure(config):
    prebuild = getattr(config, "_autlearn_prebuild", None)
    if prebuild is not None:
        prebuild.join()  # no orphaned compiler after the session
    saved = getattr(config, "_autlearn_saved_env", None)
    if saved is None:
        return
    port = int(os.environ["ANDROID_ADB_SERVER_PORT"])
    if _port_open(port):  # an adb server on our private port (started by adbutils on demand): stop it
        try:
            subprocess.run(
                [find_adb(), "kill-server"],
                env={**os.environ, "ANDROID_ADB_SERVER_PORT": str(port)},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
            )
        except Exception:
            pass
    shutil.rmtree(config._autlearn_home, ignore_errors=True)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def adb_env() -> AdbEnv:
    port = int(os.environ["ANDROID_ADB_SERVER_PORT"])
    env = AdbEnv(adb=find_adb(), port=port, home=Path(os.environ["AUTLEARN_HOME"]))
    if not _port_open(port):
        with open(env.home / "adb-start.log", "wb") as log:  # the daemon may keep inherited pipes open
            subprocess.run(
                [env.adb, "start-server"],
                env=env.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=60,
                check=True,
            )
    yield env
    subprocess.run([env.adb, "kill-server"], env=env.env(), stdin=subprocess.DEVNULL, capture_output=True, timeout=30)


@pytest.fixture(scope="session")
def session_lab(adb_env, tmp_path_factory) -> Lab:
    lab = Lab(tmp_path_factory.mktemp("session_lab_home"))
    lab.up(DEFAULT_PROFILES, base_port=find_free_ports(len(DEFAULT_PROFILES)), keep_warm=False)
    yield lab
    lab.down()


@pytest.fixture(scope="session")
def lab(session_lab) -> list[PhoneInfo]:
    return session_lab.phones()


@pytest.fixture(scope="session")
def lab_device(lab, adb_env):
    """lab_device("legacy") -> adbutils.AdbDevice of the session phone with that profile."""
    by_profile = {p.profile: p for p in lab}

    def get(profile: str):
        return adb_env.client().device(by_profile[profile].serial)

    return get


@pytest.fixture
def lab_factory(adb_env, tmp_path):
    labs: list[Lab] = []

    def make(profiles=("legacy",)) -> tuple[Lab, list[PhoneInfo]]:
        lab = Lab(tmp_path / f"lab{len(labs)}")
        labs.append(lab)
        return lab, lab.up(list(profiles), base_port=find_free_ports(len(profiles)), keep_warm=False)

    yield make
    for lab in labs:
        lab.down()


def _governors(root) -> list[str]:
    base = Path(root) / "sys/devices/system/cpu/cpufreq"
    return [(d / "scaling_governor").read_text().strip() for d in sorted(base.glob("policy*"))]


@pytest.fixture(scope="session")
def example_run(lab, runner_cache, tmp_path_factory):
    """The shipped example campaign on the session lab (test_example_campaign; test_cluster compares with it)."""
    import dataclasses

    from autlearn.engine.campaign import run_campaign
    from autlearn.engine.campaign_config import load_campaign
    from autlearn.pipelines.artifact_cache import artifact_provider

    cache = runner_cache / "artifacts"
    before = {p.serial: _governors(p.root) for p in lab}
    # the shipped file, one launch of 5 timed steps a cell instead of its 2 of 4: virtual phones take turns on this
    # host's CPUs (profiler.hostcpu) and the unoptimized LSTM's seconds-long steps would cost the suite minutes. Five,
    # not three: a throttled step a few of the throttle's windows long has one stop more or fewer than the next, and
    # the median's 95 % CI of three steps spans all three.
    # (Before issue 20 gave a new process half the spare utilisation, one launch a cell was too short: schedutil's
    # ramp from its lowest frequency made the modern phone's MobileNet faster under powersave.)
    campaign = dataclasses.replace(
        load_campaign(Path(__file__).parents[1] / "examples" / "paper.toml"), steps=5, repetitions=1
    )
    results = tmp_path_factory.mktemp("example") / "results"
    outcome = run_campaign(campaign, results, artifact_provider(cache))
    return campaign, outcome, before
