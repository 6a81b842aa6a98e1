"""The virtual lab's host CPU gate (autlearn.profiler.hostcpu), the launch CPU share parser, and the throttle's budget
(testbed/dvfs.py): pure or in-process, no phones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from autlearn.engine.worker import HarnessClock
from autlearn.profiler import hostcpu
from autlearn.profiler.steps import cpu_share, parse_children_cpu_s
from autlearn.testbed.dvfs import LATE_CREDIT_S, SignalThrottle, _Budget, _thread_cpu_ns


@pytest.fixture(autouse=True)
def private_gate(tmp_path, monkeypatch):
    monkeypatch.setattr(hostcpu.tempfile, "gettempdir", lambda: str(tmp_path))


def test_a_timed_launch_waits_for_operations_under_way_and_holds_others_off():
    events, shared_in = [], threading.Event()
    release = threading.Event()

    def operation():
        with hostcpu.shared(True):
            shared_in.set()
            events.append("op start")
            release.wait(5)
            events.append("op end")

    def launch():
        with hostcpu.exclusive(True):
            events.append("launch")
            time.sleep(0.2)
            events.append("launch end")

    def late_operation():
        with hostcpu.shared(True):
            events.append("late op")

    t1 = threading.Thread(target=operation)
    t1.start()
    shared_in.wait(5)
    t2 = threading.Thread(target=launch)
    t2.start()
    time.sleep(0.1)  # the launch now waits for the operation under way
    t3 = threading.Thread(target=late_operation)
    t3.start()
    time.sleep(0.1)  # the late operation queues behind the waiting launch (exclusive goes first)
    assert events == ["op start"]
    release.set()
    for t in (t1, t2, t3):
        t.join(5)
    assert events == ["op start", "op end", "launch", "launch end", "late op"]


def test_waits_are_counted_per_thread_and_kept_out_of_the_harness():
    held = threading.Event()

    def launch():
        with hostcpu.exclusive(True):
            held.set()
            time.sleep(0.3)

    t = threading.Thread(target=launch)
    t.start()
    held.wait(5)
    clock = HarnessClock()
    with clock.part("deploy"):
        with hostcpu.shared(True):  # a device operation of another phone, while the launch runs
            pass
        time.sleep(0.05)
    t.join()
    assert clock.wait >= 0.2 and 0.04 <= clock.parts["deploy"] < 0.2
    # inside its own launch a thread's operations do not wait for itself; a real phone never takes the gate
    with hostcpu.exclusive(True), hostcpu.shared(True), hostcpu.shared(False):
        pass


def test_times_output_gives_the_launch_cpu_share():
    assert parse_children_cpu_s("warning\n0m0.01s 0m0.00s\n0m1.50s 0m0.25s\n") == pytest.approx(1.75)
    assert parse_children_cpu_s("    0m00.00s     0m00.00s\n    1m00.20s     0m00.00s\n") == pytest.approx(60.2)
    assert parse_children_cpu_s("0m0.000000s 0m0.000000s\n0m2.000000s 0m0.000000s\n") == pytest.approx(2.0)
    assert parse_children_cpu_s("times: not found\n") is None
    assert cpu_share(1.0, 4.0, 2) == pytest.approx(0.125)
    assert cpu_share(None, 4.0, 2) is None and cpu_share(1.0, 4.0, None) is None


def test_budget_charges_a_new_group_from_its_start_and_bounds_the_credit_of_a_late_wake():
    fresh = _Budget(0.0)  # started at t=0, first seen at 0.05 s with 40 ms of CPU at share 0.1
    assert fresh.update(0.05, 0.1, 0.002, {1: 40_000_000}) == pytest.approx(0.035)
    old = _Budget(10.0, fresh=False)  # a group first budgeted long after it started: from now on only
    assert old.update(10.01, 0.1, 0.002, {1: 9_000_000_000}) == pytest.approx(-0.001)
    idle = _Budget(0.0)
    assert idle.update(1.0, 0.5, 0.002, {1: 0}) == pytest.approx(-0.002)  # idle earns one window
    late = _Budget(0.0)  # kept stopped 5 ms too long: all of it is made up
    assert late.update(0.005, 0.5, 0.002, {1: 0}, stopped=True) == pytest.approx(-0.0025)
    stalled = _Budget(0.0)  # stopped 1 s too long (a stall): made up for LATE_CREDIT_S only, never a 0.5 s burst
    assert stalled.update(1.0, 0.5, 0.002, {1: 0}, stopped=True) == pytest.approx(-(0.002 + 0.5 * LATE_CREDIT_S))


def test_throttle_holds_the_share_it_is_asked_for():
    """CPU time / wall of a busy process at share 0.25, measured from outside, within 10 %."""
    th = SignalThrottle(keep_warm=False)
    th.start()
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
    try:
        th.set_shares({p.pid: 0.25}, {p.pid: [p.pid]})
        t0 = time.monotonic()
        time.sleep(1.5)
        cpu = _thread_cpu_ns([p.pid])[0]
        wall = time.monotonic() - t0
    finally:
        th.close()
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    assert sum(cpu.values()) / 1e9 / wall == pytest.approx(0.25, rel=0.10)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def _wait_state(pid: int, want: str, timeout: float = 2.0) -> str:
    deadline = time.monotonic() + timeout
    while (st := _state(pid)) != want and time.monotonic() < deadline:
        time.sleep(0.005)
    return st


def test_another_phones_timed_launch_holds_this_phones_processes(tmp_path):
    th = SignalThrottle(keep_warm=False, serial="127.0.0.1:1")
    th.start()
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
    try:
        th.set_shares({p.pid: 1.0}, {p.pid: [p.pid]})  # unthrottled: it runs freely
        assert _wait_state(p.pid, "R") == "R"
        with hostcpu.exclusive(True, "127.0.0.1:2"):  # another phone's launch: held from its start
            assert _state(p.pid) == "T" and th.held
        assert _wait_state(p.pid, "R") == "R"
        with hostcpu.exclusive(True, "127.0.0.1:1"):  # its own phone's launch: never held
            time.sleep(0.05)
            assert _state(p.pid) == "R" and not th.held
        (tmp_path / hostcpu.lock_path("holder").name).write_text("127.0.0.1:2")  # a killed run's name, no lock
        time.sleep(0.1)
        assert _state(p.pid) == "R" and not th.held
    finally:
        th.close()
        os.kill(p.pid, signal.SIGKILL)
        p.wait()


def test_a_hold_that_found_no_live_group_ends_with_the_launch():
    """A hold on a phone whose only group had just exited (the power model still listed it) ended with `held` left
    True: that phone's power model then ticked at its idle pace for good, and its next launches were placed on
    their cluster late or never (a `little` launch ran at big-cluster speed)."""
    th = SignalThrottle(keep_warm=False, serial="127.0.0.1:1")
    th.start()
    p = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    p.wait()
    try:
        th.set_shares({p.pid: 1.0}, {p.pid: [p.pid]})
        with hostcpu.exclusive(True, "127.0.0.1:2"):
            time.sleep(0.1)
            assert th.held
        deadline = time.monotonic() + 2
        while th.held and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not th.held
    finally:
        th.close()


def test_a_shells_group_is_throttled_from_its_start_and_cpu_time_is_exact():
    """`admit` budgets a new shell's group before the power model's next tick (a launch that waited for the tick ran
    its first steps at host speed); the CPU time read (perf task-clock where the host allows) agrees with the
    kernel's own account once the thread sleeps."""
    th = SignalThrottle(keep_warm=False)
    th.start()
    burn = "import time\nt = time.thread_time()\nwhile time.thread_time() - t < 0.3: pass\ntime.sleep(30)"
    p = subprocess.Popen([sys.executable, "-c", burn], start_new_session=True)
    try:
        th.admit(p.pid, 0.25)
        t0 = time.monotonic()
        while _state(p.pid) != "S" and time.monotonic() - t0 < 10:
            time.sleep(0.01)
        wall = time.monotonic() - t0
        cpu = th.clocks.ns(p.pid, _thread_cpu_ns([p.pid])[0][p.pid])
        with open(f"/proc/{p.pid}/schedstat") as f:
            kernel = int(f.read().split()[0])
        assert cpu / 1e9 == pytest.approx(kernel / 1e9, abs=0.005)
        assert kernel / 1e9 / wall == pytest.approx(0.25, rel=0.15)  # its start and burn at a quarter of a CPU
    finally:
        th.close()
        os.kill(p.pid, signal.SIGKILL)
        p.wait()


def test_a_process_that_left_the_group_is_not_charged_to_it():
    """A child that made a process group of its own (toybox `timeout` does) is not stopped with its parent's group,
    so its CPU time must not be charged to that group: the parent's shell was stopped for the child's full-speed
    run, for seconds after the child ended."""
    th = SignalThrottle(keep_warm=False)
    th.start()
    code = (
        "import os, subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import os\\nos.setpgid(0, 0)\\nwhile True: pass'])\n"
        "time.sleep(30)"
    )
    p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        time.sleep(0.3)  # the child has left the group
        th.set_shares({p.pid: 0.25}, {p.pid: [p.pid]})
        states = []
        for _ in range(50):
            states.append(_state(p.pid))
            time.sleep(0.02)
        assert "T" not in states
    finally:
        th.close()
        with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
        for pg in (p.pid, *kids):
            os.killpg(pg, signal.SIGKILL)
        p.wait()


def test_no_budget_stop_outlasts_the_cap(monkeypatch):
    """A group the budget keeps stopped longer than MAX_STOP_S (a bug: a wrong charge) is continued, and counted."""
    import autlearn.testbed.dvfs as dvfs

    monkeypatch.setattr(dvfs, "MAX_STOP_S", 0.3)
    th = SignalThrottle(keep_warm=False)
    th.start()
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
    try:
        th.admit(p.pid, 0.001)  # a 2 ms window at a thousandth of a CPU: stopped ~2 s at a time
        assert _wait_state(p.pid, "T") == "T"
        assert _wait_state(p.pid, "R", timeout=1.0) == "R" and th.errors >= 1
    finally:
        th.close()
        os.kill(p.pid, signal.SIGKILL)
        p.wait()


def test_a_group_stopped_with_no_stop_on_the_books_is_continued():
    """A stop that escaped the books (the hang seen in CI: a launch stopped for good, and with it the host CPU gate
    every other phone waited on) is found within a second and continued, and counted."""
    th = SignalThrottle(keep_warm=False)
    th.start()
    p = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.01)"], start_new_session=True)
    try:
        th.set_shares({p.pid: 1.0}, {p.pid: [p.pid]})  # ours, unthrottled: nothing here stops it
        os.killpg(p.pid, signal.SIGSTOP)
        assert _wait_state(p.pid, "T") == "T"
        assert _wait_state(p.pid, "S", timeout=3.0) == "S" and th.healed == 1
    finally:
        th.close()
        os.kill(p.pid, signal.SIGKILL)
        p.wait()


def test_a_stop_is_never_sent_to_a_group_number_given_out_again():
    """A group's number comes back within minutes where pid_max is 32768: a throttle whose books still hold the old
    group (its leader started at another time) must not stop the new owner, another phone's launch."""
    th = SignalThrottle(keep_warm=False)
    p = subprocess.Popen([sys.executable, "-c", "import time\ntime.sleep(30)"], start_new_session=True)
    try:
        th.set_shares({p.pid: 1.0}, {p.pid: [p.pid]})
        assert _wait_state(p.pid, "S", timeout=10) == "S"
        th._known[p.pid] -= 1  # the books' group started one tick before this process
        assert not th._signal(p.pid, signal.SIGSTOP)
        time.sleep(0.05)
        assert _state(p.pid) == "S"
        th._known[p.pid] += 1
        assert th._signal(p.pid, signal.SIGSTOP) and _wait_state(p.pid, "T") == "T"
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
