"""Dead letters (SPEC §4, `ppo.telemetry.epochs.dlq`): the DLQ message of a rejected input, built to fit.

Pure: no Kafka client types. The runner's Kafka message becomes a `SourceMessage`; the result is a
`DeadLetter` (key, value, headers) that the validator group produces.

- **Our headers are authoritative.** `error.stage`, `error.rule`, `error.message` (cut to
  `ERROR_MESSAGE_MAX_BYTES`), `source.topic`, `source.partition`, `source.offset` come first. A sender's
  header whose name starts with `error.`, `source.` or `original.` is kept as `original.<name>`, so it
  can never pass for ours, and stripping one `original.` always gives the sender's name back; the
  sender's other headers (`telemetry_version`, ...) are kept as they are.
- **Poison of any size fits.** A record that is too large for the DLQ is dead-lettered shortened, never
  refused: the value is cut first, then the sender's headers are dropped (from the first that does not
  fit on), then the key is cut. A cut part gets `source.<part>.length` (its original length in bytes), `source.<part>.sha256`
  (hex digest of the original) and `source.<part>.truncated` (`true`); dropped headers are counted in
  `source.headers.dropped`. Those headers appear only when something was cut.
- **Headers the client cannot read.** confluent-kafka cannot read a header name that is not UTF-8 (it
  raises `SystemError`); such a message's headers are all dropped and `source.headers.unreadable` is
  `true`, so a header cannot stop the group either.
- **Sizes as librdkafka and the broker measure them.** `record_size` is librdkafka's own bound on a
  record (`36` bytes of worst-case varints + key + value + headers as serialised), the measure its
  `produce()` checks against the producer's `message.max.bytes`. The broker checks a whole record batch
  (a 61-byte header + records) against the topic's `max.message.bytes`; librdkafka puts a second record
  in a batch only while the batch stays within `message.max.bytes`, so a record within
  `record_limit(topic, producer)` is accepted by both. Compression cannot break this: librdkafka sends
  a batch uncompressed when compressing does not make it smaller.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from avro_schemas.errors import (
    DecodeError, EmptyMessageError, TelemetryError, TruncatedMessageError, UnknownSchemaError, WrongHeaderError,
)

__all__ = [
    "DLQ_MAX_MESSAGE_BYTES", "DLQ_TOPIC_CONFIG", "ERROR_MESSAGE_MAX_BYTES", "KAFKA_DEFAULT_MAX_MESSAGE_BYTES",
    "MIN_RECORD_LIMIT", "ORIGINAL_PREFIX", "PRODUCER_MESSAGE_MAX_BYTES", "RECORD_BATCH_OVERHEAD", "RECORD_OVERHEAD",
    "DeadLetter", "DeadLetterError", "Header", "Rejection", "SourceMessage",
    "check_record_limit", "dead_letter", "decode_rule", "headers_size", "record_limit", "record_size",
]

Header = tuple[str, bytes | None]

KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588  # the broker's `message.max.bytes` default: 1 MiB + 12 bytes of log overhead
RECORD_BATCH_OVERHEAD = 61  # a v2 record batch's header: offset, length, epoch, magic, crc, ..., record count
RECORD_OVERHEAD = 36  # librdkafka's RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD: a record's varints at their widest

# The DLQ topic is created with Kafka's default limit, set explicitly so that a broker configured with a
# smaller default does not shrink it and a reader with default fetch sizes can read every dead letter.
DLQ_MAX_MESSAGE_BYTES = KAFKA_DEFAULT_MAX_MESSAGE_BYTES
DLQ_TOPIC_CONFIG = {"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)}
# The consumers' producer takes single records as large as the DLQ takes (librdkafka's default is 1,000,000)
PRODUCER_MESSAGE_MAX_BYTES = DLQ_MAX_MESSAGE_BYTES - RECORD_BATCH_OVERHEAD

ERROR_MESSAGE_MAX_BYTES = 1024
# Room for our own headers with the longest topic name (249 characters) and every cut header: a DLQ that
# takes less cannot hold a dead letter and is refused when the group starts
MIN_RECORD_LIMIT = 4096
ORIGINAL_PREFIX = "original."
_RESERVED_PREFIXES = ("error.", "source.", ORIGINAL_PREFIX)
_WIDEST_LENGTH = str(2**31).encode()  # a Kafka key, value or header count is below 2**31


class DeadLetterError(TelemetryError):
    """The DLQ's limits leave no room for a dead letter."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an input message was not processed: `stage` `decode` or `validate`, a rule and a message."""

    stage: str
    rule: str
    message: str


@dataclass(frozen=True, slots=True)
class SourceMessage:
    """The rejected input message as it was read."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[Header] = ()
    headers_unreadable: bool = False  # the client could not read them: dropped


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The DLQ message: key, value and headers."""

    key: bytes | None
    value: bytes | None
    headers: list[Header]

    @property
    def size(self) -> int:
        """`record_size` of this message."""
        return record_size(self.key, self.value, self.headers)


_DECODE_RULES: tuple[tuple[type[DecodeError], str], ...] = (
    (EmptyMessageError, "empty"),
    (WrongHeaderError, "wrong_header"),
    (TruncatedMessageError, "truncated"),
    (UnknownSchemaError, "unknown_schema"),
)


def decode_rule(error: DecodeError) -> str:
    """The DLQ's `error.rule` for a decode failure, by its type (`undecodable` for any other)."""
    for kind, rule in _DECODE_RULES:
        if isinstance(error, kind):
            return rule
    return "undecodable"


# ------------------------------------------------------------------------------------ sizes


def _varint_size(number: int) -> int:
    """Bytes of a Kafka (zigzag) varint."""
    zigzag = (number << 1) ^ (number >> 63)
    return max(1, (zigzag.bit_length() + 6) // 7)


def _header_size(header: Header) -> int:
    name = header[0].encode("utf-8")
    value = header[1] or b""
    return _varint_size(len(name)) + len(name) + _varint_size(len(value)) + len(value)


def headers_size(headers: Sequence[Header]) -> int:
    """Bytes the headers take in a record, as librdkafka serialises them."""
    return sum(_header_size(header) for header in headers)


def record_size(key: bytes | None, value: bytes | None, headers: Sequence[Header]) -> int:
    """librdkafka's bound on a record's size: what `produce()` compares with `message.max.bytes`."""
    return RECORD_OVERHEAD + len(key or b"") + len(value or b"") + headers_size(headers)


def record_limit(topic_max_message_bytes: int, producer_message_max_bytes: int = PRODUCER_MESSAGE_MAX_BYTES) -> int:
    """The largest `record_size` that both the producer and a topic with this `max.message.bytes` accept."""
    return min(producer_message_max_bytes, topic_max_message_bytes - RECORD_BATCH_OVERHEAD)


def check_record_limit(limit: int, topic: str) -> int:
    """`limit` when a dead letter fits in it; `DeadLetterError` when not even the DLQ's own headers do."""
    if limit < MIN_RECORD_LIMIT:
        raise DeadLetterError(
            f"topic {topic} takes records of at most {limit} bytes (max.message.bytes and the producer's "
            f"message.max.bytes); a dead letter needs {MIN_RECORD_LIMIT}"
        )
    return limit


# ------------------------------------------------------------------------------------ headers


def _cut_text(text: str, limit: int) -> bytes:
    """`text` as UTF-8, cut to at most `limit` bytes on a character boundary."""
    data = text.encode("utf-8", "replace")
    return data if len(data) <= limit else data[:limit].decode("utf-8", "ignore").encode("utf-8")


def _own_headers(source: SourceMessage, rejection: Rejection) -> list[Header]:
    own: list[Header] = [
        ("error.stage", rejection.stage.encode()),
        ("error.rule", rejection.rule.encode()),
        ("error.message", _cut_text(rejection.message, ERROR_MESSAGE_MAX_BYTES)),
        ("source.topic", source.topic.encode()),
        ("source.partition", str(source.partition).encode()),
        ("source.offset", str(source.offset).encode()),
    ]
    return own + [("source.headers.unreadable", b"true")] if source.headers_unreadable else own


def _sender_headers(headers: Sequence[Header]) -> list[Header]:
    """The sender's headers, those in our namespaces (or in `original.`) renamed `original.<name>`."""
    return [
        (ORIGINAL_PREFIX + name if name.startswith(_RESERVED_PREFIXES) else name, value) for name, value in headers
    ]


def _cut_headers(part: str, original: bytes) -> list[Header]:
    return [
        (f"source.{part}.length", str(len(original)).encode()),
        (f"source.{part}.sha256", hashlib.sha256(original).hexdigest().encode()),
        (f"source.{part}.truncated", b"true"),
    ]


# The most the cut headers can take (both parts cut, every count at its widest): reserved before cutting
_CUT_RESERVE = headers_size(
    [(name, _WIDEST_LENGTH if name.endswith("length") else value) for name, value in
     _cut_headers("key", b"") + _cut_headers("value", b"")]
    + [("source.headers.dropped", _WIDEST_LENGTH)]
)


# ------------------------------------------------------------------------------------ the dead letter


def dead_letter(source: SourceMessage, rejection: Rejection, limit: int) -> DeadLetter:
    """The DLQ message of `source`: whole when its `record_size` is within `limit`, else shortened."""
    own = _own_headers(source, rejection)
    theirs = _sender_headers(source.headers)
    whole = DeadLetter(source.key, source.value, own + theirs)
    if whole.size <= limit:
        return whole
    return _shortened(source, own, theirs, limit - RECORD_OVERHEAD - headers_size(own) - _CUT_RESERVE)


def _shortened(source: SourceMessage, own: list[Header], theirs: list[Header], room: int) -> DeadLetter:
    """Key first, then the sender's headers while they fit, then as much of the value as is left of `room`."""
    key = source.key if source.key is None else source.key[:room]
    room -= len(key or b"")
    kept: list[Header] = []
    for header in theirs:
        size = _header_size(header)
        if size > room:
            break  # from the first that does not fit on, headers are dropped: those kept are a prefix
        kept.append(header)
        room -= size
    value = source.value if source.value is None else source.value[: max(0, room)]
    cut = own
    if key != source.key:
        cut = cut + _cut_headers("key", source.key)
    if value != source.value:
        cut = cut + _cut_headers("value", source.value)
    if len(kept) < len(theirs):
        cut = cut + [("source.headers.dropped", str(len(theirs) - len(kept)).encode())]
    return DeadLetter(key, value, cut + kept)
