"""Processes this project starts on the local machine (the Kafka broker's nodes, the Schema Registry): is a
pid alive, is a loopback port taken, signal and wait for exit."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

__all__ = ["await_exit", "pid_alive", "port_taken", "reap", "send_signal"]


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (a child of ours not yet reaped) is not running
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def port_taken(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port` (SO_REUSEADDR, as Java binds: a port a stopped
    broker's connections still hold in TIME_WAIT is free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def await_exit(pids: list[int], timeout: float) -> None:
    """Wait until every pid has exited, SIGKILLing whatever outlives `timeout`; reaps our children."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive:
        for pid in alive:
            reap(pid)
        alive = [pid for pid in alive if pid_alive(pid)]
        if alive and time.monotonic() > deadline:
            for pid in alive:
                send_signal(pid, signal.SIGKILL)
            deadline = float("inf")  # SIGKILL is not refused: wait for it
        time.sleep(0.05)


def send_signal(pid: int, signum: int) -> None:
    """Send `signum` to `pid`, if it still exists."""
    # the process may have ended since it was seen alive: nothing left to signal
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def reap(pid: int) -> None:
    """Collect `pid`'s exit status if it is an ended child of ours (so it is no zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
