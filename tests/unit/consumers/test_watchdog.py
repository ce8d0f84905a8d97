"""The watchdog (issue 9, item 2): deadlines on blocking calls and a bounded stop, decided by a pure function
of the clock, and enforced on a real process whose main thread is stuck in C with the stop signals pending."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from consumers.watchdog import EXIT_OVERDUE, Watchdog

ROOT = Path(__file__).resolve().parents[3]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(stop_grace: float = 30.0) -> tuple[Watchdog, Clock]:
    clock = Clock()
    return Watchdog("consume watch", stop_grace=stop_grace, clock=clock), clock


def test_a_call_within_its_deadline_is_not_overdue_and_its_deadline_ends_with_it() -> None:
    watchdog, clock = make()
    with watchdog.deadline("commit_transaction", 90):
        clock.now += 89.9
        assert watchdog.overdue(clock.now) is None
    clock.now += 1000
    assert watchdog.overdue(clock.now) is None


def test_a_call_past_its_deadline_is_named_in_one_line() -> None:
    watchdog, clock = make()
    with watchdog.deadline("send_offsets_to_transaction", 60):
        clock.now += 60
        line = watchdog.overdue(clock.now)
    assert line is not None and "\n" not in line
    assert line.startswith("consume watch: send_offsets_to_transaction did not return within 60 s")
    assert "nothing is lost or doubled" in line


def test_nested_deadlines_the_earliest_due_decides() -> None:
    watchdog, clock = make()
    with watchdog.deadline("outer", 100):
        clock.now += 50
        with watchdog.deadline("inner", 10):
            clock.now += 10
            assert "inner did not return" in (watchdog.overdue(clock.now) or "")


def test_a_stop_signal_gives_the_grace_then_names_the_call_in_progress() -> None:
    watchdog, clock = make(stop_grace=30)
    with watchdog.deadline("commit_transaction", 600):
        watchdog.stop_signalled()
        clock.now += 29.9
        assert watchdog.overdue(clock.now) is None
        clock.now += 0.1
        line = watchdog.overdue(clock.now)
    assert line == "consume watch: not stopped 30 s after SIGTERM/SIGINT (inside commit_transaction); exiting"


def test_a_second_stop_signal_ends_at_once_and_the_grace_counts_from_the_first() -> None:
    watchdog, clock = make(stop_grace=30)
    watchdog.stop_signalled()
    clock.now += 20
    assert watchdog.overdue(clock.now) is None
    watchdog.stop_signalled()
    assert watchdog.overdue(clock.now) == "consume watch: second stop signal; exiting now"


# --- a real process, its main thread stuck in C -----------------------------------------------------

CHILD = textwrap.dedent("""
    import ctypes, signal, sys, threading
    sys.path.insert(0, {root!r})
    from consumers.watchdog import Watchdog

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())   # a consumer's own handler: it cannot run while stuck
    watchdog = Watchdog("consume test", stop_grace={grace}, tick=0.05)
    watchdog.start()
    # From here on the main thread ignores the signals the way a thread inside librdkafka does: it blocks
    # them, so the kernel hands them to the watchdog's thread, and it sleeps in C without returning.
    signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGTERM, signal.SIGINT}})
    with watchdog.deadline("send_offsets_to_transaction", {deadline}):
        print("stuck", flush=True)
        ctypes.CDLL(None).sleep(120)
    print("returned", flush=True)
""")


def run_child(grace: float, deadline: float, send: list[signal.Signals]) -> subprocess.CompletedProcess[str]:
    source = CHILD.format(root=str(ROOT), grace=grace, deadline=deadline)
    child = subprocess.Popen([sys.executable, "-c", source], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline() == "stuck\n"
    for signum in send:
        child.send_signal(signum)
    out, err = child.communicate(timeout=90)  # a hang guard only: the child would otherwise sleep 120 s
    return subprocess.CompletedProcess(child.args, child.returncode, "stuck\n" + out, err)


def test_a_process_stuck_in_c_past_a_deadline_exits_2_with_one_line() -> None:
    done = run_child(grace=30, deadline=1, send=[])
    assert done.returncode == EXIT_OVERDUE
    assert done.stdout == "stuck\n"
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("consume test: send_offsets_to_transaction did not return within 1 s")


def test_sigterm_ends_a_process_stuck_in_c_after_the_grace() -> None:
    done = run_child(grace=1, deadline=600, send=[signal.SIGTERM])
    assert done.returncode == EXIT_OVERDUE
    assert done.stderr.strip() == (
        "consume test: not stopped 1 s after SIGTERM/SIGINT (inside send_offsets_to_transaction); exiting")


def test_a_second_stop_signal_ends_a_process_stuck_in_c_at_once() -> None:
    # SIGTERM then SIGINT: two of one kind sent at once may reach the process as one (signals do not queue)
    done = run_child(grace=600, deadline=600, send=[signal.SIGTERM, signal.SIGINT])
    assert done.returncode == EXIT_OVERDUE
    assert done.stderr.strip() == "consume test: second stop signal (inside send_offsets_to_transaction); exiting now"
