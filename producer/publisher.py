"""The publisher process: telemetry's serialising and I/O, off the training process.

Building, checking, serialising and writing a record costs a few microseconds of Python, which on a
fast environment is more than 1% of an epoch. The training process instead sends each batch of packed
epoch rows (`producer.records`) down a pipe to a child process (`python -m producer.publisher`) that
owns the sinks, builds the records and writes them, on the machine's other core.

Protocol, on the child's stdin and stdout: frames of a 4-byte big-endian length and a pickle.
Parent -> child: the configuration first, then packed rows (`RowBatch.data`, framed raw: the length's
top bit set), `("flush",)`, `("close",)`.
Child -> parent: `("ok", next_offset)` after the configuration, each flush and the close, or
`("error", message)`, after which the child exits. Rows are not acknowledged one batch at a time (the
training loop never waits for the disk); the first error is reported on the next call, as
confluent-kafka and Quix Streams report a failed delivery on the next produce or flush.

The child ignores SIGINT: a Ctrl-C at a terminal reaches the whole process group, and the parent, which
finishes its epoch and then closes the publisher, decides when writing stops. When the parent dies, the
child reads end-of-file, writes what it has and exits.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from avro_schemas.errors import TelemetryError

if TYPE_CHECKING:
    from producer.records import RowBatch

__all__ = ["KafkaTarget", "PublisherError", "PublisherProcess"]

_LENGTH = struct.Struct(">I")
_RAW = 0x8000_0000  # a length with this bit set frames raw packed rows, not a pickle
_PIPE_BYTES = 1 << 20  # a second's rows fit in the pipe: the training loop never waits for the child


class PublisherError(TelemetryError):
    """The publisher process could not write, or stopped."""


@dataclass(frozen=True)
class KafkaTarget:
    """Where and how the publisher's Kafka sink writes (`producer.kafka_sink.KafkaSink`)."""

    config: dict[str, Any] = field(repr=False)
    """librdkafka settings: connection and security."""
    partitions: int = 3
    """The epochs topic's partitions, when the sink creates it."""
    namespace: str = ""
    """The topics' prefix (`avro_schemas.topics.Namespace`)."""
    wire_format: str = "single-object"
    """`single-object` or `confluent` (SPEC §11)."""
    schema_registry: str | None = None
    """The Confluent-compatible Schema Registry API's URL, for `confluent`."""


def _write_frame(stream: BinaryIO, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)))
    stream.write(data)
    stream.flush()


def _write_rows(stream: BinaryIO, rows: bytes | bytearray) -> None:
    """A frame of packed rows, written as they are (no pickling, no copy)."""
    stream.write(_LENGTH.pack(_RAW | len(rows)))
    stream.write(rows)
    stream.flush()


def _read_frame(stream: BinaryIO) -> Any | None:
    """The next message (packed rows arrive as `("rows", bytes)`), or None at end of file."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(header)
    raw = size & _RAW
    size &= ~_RAW
    data = stream.read(size)
    if len(data) < size:
        return None
    return ("rows", data) if raw else pickle.loads(data)


def _widen_pipe(stream: BinaryIO) -> None:
    """Let the pipe hold a batch or two (Linux; elsewhere, or when refused, the default stays)."""
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)
    except (ImportError, OSError):
        pass


class PublisherProcess:
    """The parent's end: start the child, send it row batches, flush, close."""

    def __init__(
        self,
        ndjson_dir: Path | None,
        max_segment_bytes: int,
        run_id: str,
        v1_1: bool,
        kafka: KafkaTarget | None = None,
        wait_for_start: bool = True,
    ) -> None:
        """Start the child and wait until its sinks are open (a one-line `PublisherError` if not).

        Sinks: the NDJSON stream in `ndjson_dir` and/or Kafka (`kafka`); at least one.

        `wait_for_start=False` returns at once, while the child starts (~0.1 s of imports and opening
        the sinks) beside the caller's work: its answer is read by `check` as soon as it is there, and
        waited for by the first call that needs it; a failure to open the sinks is raised there."""
        if ndjson_dir is None and kafka is None:
            raise ValueError("the publisher needs an NDJSON directory, Kafka settings or both")
        self.next_offset: int | None = None
        self.closed_cleanly = False
        """True once `close` has seen the child write (and deliver) every record."""
        self._closed = False
        self._start_answered = False  # the child's answer to the configuration has been read
        self._error: PublisherError | None = None  # the first failure, raised again on every later call
        self._process = subprocess.Popen(
            [sys.executable, "-m", "producer.publisher"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=os.getcwd(),
        )
        config = {
            "ndjson_dir": None if ndjson_dir is None else str(ndjson_dir),
            "max_segment_bytes": max_segment_bytes,
            "run_id": run_id,
            "v1_1": v1_1,
            "kafka": kafka,
        }
        _widen_pipe(self._process.stdin)
        try:
            _write_frame(self._process.stdin, config)
        except OSError:
            pass  # the reply (or its absence) says what happened
        if wait_for_start:
            self._started()

    def _started(self) -> None:
        """Read the child's answer to the configuration, once (waiting for it if need be)."""
        if not self._start_answered:
            self._start_answered = True
            self._await_ok("start")

    def check(self) -> None:
        """Raise the publisher's failure, if any, without waiting: the first failure kept, or the child's
        failure to start when its answer has arrived."""
        if self._error is not None:
            raise self._error
        if not self._start_answered and not self._closed:
            readable, _, _ = select.select([self._process.stdout], [], [], 0)
            if readable:
                self._started()

    def _fail(self, message: str) -> PublisherError:
        self._process.wait()
        self._closed = True
        self._release_pipes()
        self._error = PublisherError(message)
        return self._error

    def _release_pipes(self) -> None:
        # closed now, not by a finaliser later: flushing a pipe to a dead child at an arbitrary moment
        # (a process running with SIGPIPE at its default) would kill the process
        for stream in (self._process.stdin, self._process.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def _await_ok(self, what: str) -> None:
        reply = _read_frame(self._process.stdout)
        if reply is None:
            code = self._process.wait()
            raise self._fail(f"the publisher process exited during {what} (exit code {code}); records since the last flush may be lost")
        kind, value = reply
        if kind == "error":
            raise self._fail(value)
        self.next_offset = value

    def _send(self, message: Any, what: str, raw: bool = False) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise PublisherError("the publisher process is closed")
        self._started()
        try:
            (_write_rows if raw else _write_frame)(self._process.stdin, message)
        except (BrokenPipeError, OSError):
            self._await_ok(what)  # reads the child's error, or reports its exit
            raise PublisherError(f"the publisher process stopped reading during {what}") from None

    def publish_rows(self, rows: RowBatch) -> None:
        """Hand a batch of epoch rows to the child (it writes them while training goes on)."""
        self._send(rows.data, "publish", raw=True)

    def flush(self) -> None:
        """Wait until the child has written every row sent so far."""
        self._send(("flush",), "flush")
        self._await_ok("flush")

    def abort(self) -> None:
        """Stop the child at once (SIGKILL): what it has not written or delivered yet is lost."""
        if self._process.poll() is None:
            self._process.kill()
        self._closed = True
        self._release_pipes()
        self._process.wait()

    def close(self) -> None:
        """Write everything, close the sinks and wait for the child to exit; idempotent.

        After a failure, closing raises that failure again (once it is handled, call it no more)."""
        if self._error is not None:
            raise self._error
        if self._closed:
            return
        try:
            self._send(("close",), "close")
            self._await_ok("close")
            self.closed_cleanly = True
        except KeyboardInterrupt:  # the caller gives up waiting (a second Ctrl-C): do not wait below
            self.abort()
            raise
        finally:
            self._closed = True
            self._release_pipes()
            self._process.wait()


def _open_sinks(config: dict[str, Any]) -> list:
    """The configured sinks, the numbering one (NDJSON) first; closes what it opened if one fails."""
    sinks: list = []
    try:
        if config["ndjson_dir"] is not None:
            from producer.ndjson_sink import NdjsonSink

            sinks.append(NdjsonSink(Path(config["ndjson_dir"]), config["max_segment_bytes"], buffered=True))
        target: KafkaTarget | None = config.get("kafka")
        if target is not None:
            from avro_schemas.topics import Namespace
            from producer.kafka_sink import KafkaSink

            first = sinks[0].writer.next_offset if sinks else 0
            kafka = KafkaSink(
                target.config, partitions=target.partitions, first_offset=first, namespace=Namespace(target.namespace),
                wire_format=target.wire_format, schema_registry=target.schema_registry,
            )
            kafka.on_wait = _waiting_note
            sinks.append(kafka)
    except TelemetryError:
        _close_quietly(sinks)
        raise
    return sinks


_last_note = [0.0]


def _waiting_note(remaining: int, waited: float) -> None:
    """While a flush waits for Kafka, say so every 10 s (on the stderr train shares with us)."""
    if waited - _last_note[0] >= 10.0 or waited < _last_note[0]:
        _last_note[0] = waited
        print(
            f"ppo-telemetry publisher: waiting for {remaining} records to reach Kafka ({waited:.0f} s so far; "
            "librdkafka retries until message.timeout.ms, then reports them undelivered)",
            file=sys.stderr,
            flush=True,
        )


def _close_quietly(sinks: list) -> None:
    for sink in sinks:
        try:
            sink.close()
        except TelemetryError:
            pass


def _reply(out: BinaryIO, message: Any) -> None:
    """Answer the parent; when it is gone (it gave up waiting) there is nobody to tell."""
    try:
        _write_frame(out, message)
    except (BrokenPipeError, ValueError):
        pass


def _next_offset(sinks: list) -> int:
    first = sinks[0]
    return first.writer.next_offset if hasattr(first, "writer") else first.next_offset


def _serve(inp: BinaryIO, out: BinaryIO) -> int:
    """The child's loop; returns its exit code."""
    from producer.records import RowBatch, build_record

    config = _read_frame(inp)
    if config is None:
        return 0
    try:
        sinks = _open_sinks(config)
    except TelemetryError as exc:
        _write_frame(out, ("error", str(exc)))
        return 1
    run_id, v1_1 = config["run_id"], config["v1_1"]
    publishers = [sink.publish for sink in sinks]
    _write_frame(out, ("ok", _next_offset(sinks)))
    try:
        while True:
            message = _read_frame(inp)
            if message is None:  # the parent is gone: keep what it sent
                for sink in sinks:
                    sink.close()
                return 0
            kind = message[0]
            if kind == "rows":
                for row in RowBatch(message[1]):
                    record = build_record(row, run_id, v1_1)
                    for publish in publishers:
                        publish(record)
                for sink in sinks:
                    # the stream's buffer goes to disk once a batch; Kafka only serves its delivery
                    # reports (waiting for deliveries here would stall the pipe while a broker is away)
                    (sink.poll if hasattr(sink, "poll") else sink.flush)()
            elif kind == "flush":
                for sink in sinks:
                    sink.flush()
                _reply(out, ("ok", _next_offset(sinks)))
            elif kind == "close":
                for sink in sinks:
                    sink.close()
                _reply(out, ("ok", _next_offset(sinks)))
                return 0
    except TelemetryError as exc:
        _close_quietly(sinks)
        try:
            _write_frame(out, ("error", str(exc)))
        except OSError:
            pass
        return 1


def main() -> int:
    """Entry point of `python -m producer.publisher` (started by `PublisherProcess`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return _serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    sys.exit(main())
