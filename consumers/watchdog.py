"""Deadlines a consumer enforces on itself, so it is never wedged (issue 9, item 2).

librdkafka does not always honour a call's own timeout (`send_offsets_to_transaction` has blocked for
minutes across a broker restart: librdkafka issues #5456 and #5511), and while the main thread is inside
such a call Python cannot run a signal handler: SIGTERM and SIGINT are noted and wait. A `Watchdog` is a
thread of its own that

- holds a deadline for each blocking call (`with watchdog.deadline("commit_transaction", 90): ...`) and,
  when one passes, writes one line and ends the process with exit code 2, for a supervisor (compose
  `restart:`, systemd `Restart=`) to start it again. Nothing is lost or doubled by that: the open
  transaction was not committed, so its outputs stay invisible to `read_committed` readers and the input
  is read again from the committed offsets, with the state committed beside them;
- learns of SIGTERM and SIGINT through `signal.set_wakeup_fd` (written by Python's C-level handler, even
  while the main thread is stuck in C) and ends the process if it has not stopped `stop_grace` seconds
  later; a second signal ends it at once.

The decisions are in `Watchdog.overdue`, a pure function of the clock; the thread only reads the clock
and the signal pipe, and exits.
"""

from __future__ import annotations

import itertools
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["EXIT_OVERDUE", "STOP_SIGNALS", "Watchdog"]

EXIT_OVERDUE = 2
"""The exit code of a process the watchdog ended (SPEC §7: 2 for I/O errors)."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True, slots=True)
class _Deadline:
    what: str
    seconds: float
    due: float


class Watchdog:
    """Deadlines on blocking calls and a bounded stop, enforced from a thread of its own.

    `program` starts every line it writes. `clock`, `write` and `exit` are the monotonic clock, the
    stderr writer and `os._exit` (which ends the process from any thread, stuck main thread or not).
    """

    def __init__(
        self,
        program: str,
        stop_grace: float = 30.0,
        tick: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        write: Callable[[str], object] | None = None,
        exit: Callable[[int], object] = os._exit,
    ) -> None:
        self.program = program
        self.stop_grace = stop_grace
        self._tick = tick
        self._clock = clock
        self._write = write or _write_stderr
        self._exit = exit
        self._lock = threading.Lock()
        self._tokens = itertools.count()
        self._deadlines: dict[int, _Deadline] = {}
        self._stop_due: float | None = None
        self._signals_seen = 0
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._pipe: tuple[socket.socket, socket.socket] | None = None
        self._previous_wakeup_fd: int | None = None

    # --- what the main thread calls -----------------------------------------------------------------

    @contextmanager
    def deadline(self, what: str, seconds: float) -> Iterator[None]:
        """The block must end within `seconds`, or the process ends with one line naming `what`."""
        token = next(self._tokens)
        with self._lock:
            self._deadlines[token] = _Deadline(what, seconds, self._clock() + seconds)
        try:
            yield
        finally:
            with self._lock:
                del self._deadlines[token]

    def stop_signalled(self) -> None:
        """A stop signal arrived: the process has `stop_grace` seconds; a second signal ends it now."""
        with self._lock:
            self._signals_seen += 1
            if self._stop_due is None:
                self._stop_due = self._clock() + self.stop_grace

    def overdue(self, now: float) -> str | None:
        """The line to end the process with, if a deadline or the stop's grace has passed at `now`."""
        with self._lock:
            busy = min(self._deadlines.values(), key=lambda d: d.due, default=None)
            if self._signals_seen >= 2:
                return f"{self.program}: second stop signal{_inside(busy)}; exiting now"
            if self._stop_due is not None and now >= self._stop_due:
                return (f"{self.program}: not stopped {self.stop_grace:g} s after SIGTERM/SIGINT{_inside(busy)}; "
                        f"exiting")
            if busy is not None and now >= busy.due:
                return (f"{self.program}: {busy.what} did not return within {busy.seconds:g} s (the broker "
                        f"unreachable or the client stuck); exiting for a supervisor to restart it: the open "
                        f"transaction is not committed, so nothing is lost or doubled")
        return None

    # --- the thread ---------------------------------------------------------------------------------

    def start(self, watch_signals: bool = True) -> None:
        """Start the thread; with `watch_signals` (main thread only) it also learns of SIGTERM/SIGINT
        while the main thread is busy in C. The caller keeps its own Python-level handlers."""
        if watch_signals:
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            self._pipe = (reader, writer)
            self._previous_wakeup_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name=f"{self.program}-watchdog", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and give the signal wake-up descriptor back (main thread)."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._pipe is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd if self._previous_wakeup_fd is not None else -1)
            for end in self._pipe:
                end.close()
            self._pipe = None

    def __enter__(self) -> Watchdog:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _watch(self) -> None:
        while not self._closing.is_set():
            self._read_signals()
            line = self.overdue(self._clock())
            if line is not None:
                self._write(line + "\n")
                self._exit(EXIT_OVERDUE)
                return

    def _read_signals(self) -> None:
        """Wait up to a tick for signal numbers on the wake-up pipe (or just a tick without one)."""
        if self._pipe is None:
            self._closing.wait(self._tick)
            return
        reader = self._pipe[0]
        ready, _, _ = select.select([reader], [], [], self._tick)
        if not ready:
            return
        try:
            received = reader.recv(64)
        except BlockingIOError:
            return
        for signum in received:
            if signum in STOP_SIGNALS:
                self.stop_signalled()


def _inside(busy: _Deadline | None) -> str:
    return f" (inside {busy.what})" if busy is not None else ""


def _write_stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()
