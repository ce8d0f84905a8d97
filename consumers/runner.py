"""The Kafka runner around a consumer's pure core: batches, transactions, state, schemas, shutdown.

Each consumer group (validator, drift, watch) is a `ConsumerCore` (records in, output messages out)
inside a `TransactionalRunner`, which owns everything Kafka (SPEC §4):

- **Consume-transform-produce in transactions.** A batch of input messages (not one poll per
  record) is decoded, validated and handed to the core; the outputs, the changed per-run state and
  the input offsets (`send_offsets_to_transaction`) commit in one transaction. A batch is whatever
  has arrived, up to `batch_size`: the runner waits (up to `poll_timeout`) for the first message
  only, then takes what is already fetched without waiting, so a backlog goes in large batches and a
  trickle is not held back to fill one (`consume(n, timeout)` waits for n messages or the timeout).
  Readers of the outputs use `isolation.level=read_committed`, so a crash at any point leaves either
  the whole batch's effects or none of them, and the batch is consumed again after restart.
- **Per-run dedupe.** Beside the Kafka offsets, per run, the last `log_stream_offset` processed
  (`consumers.validator.StreamTracker`): a re-sent record is a duplicate and produces nothing.
- **State survives restarts and rebalances.** Per-run state (the dedupe mark and the core's own, such
  as the watch rules' firing states) is written, in the same transaction, to the compacted topic
  `<group>.state`, into the partition of the input partition the run's records come from (records are
  keyed by `run_id`, so a run lives in one partition). When a partition is assigned, its state
  partition is read back to its end (read_committed); when revoked, its runs are forgotten. What is kept
  and how it is read back: `consumers.state_store.RunStates`; the runner does the Kafka reads and writes.
- **Idle outputs.** A core may have `on_idle(now)` (the drift group's summaries of runs gone quiet):
  the runner calls it when a poll returns nothing, and every `idle_interval` seconds while busy, and
  commits what it returns with those runs' state in a transaction of its own.
- **Schemas.** Input values are single-object or Confluent-framed, told apart by the first byte
  (`consumers.schema_resolver.SchemaResolver`): an unknown fingerprint makes the runner read the schema
  topic (`ppo.telemetry.schemas`) and retry; the schema ids of a batch's Confluent-framed values are
  fetched from the Schema Registry (`schema_registry`) before its transaction begins, waiting while the
  registry is away. A writer schema learnt either way is read resolved into the newest local version.
- **Record sizes.** The producer takes single records as large as the DLQ does (`message.max.bytes`,
  `consumers.dead_letter`); at start, the core is told each output topic's limit as the broker has it, so
  the validator can cut a dead letter to fit rather than fail the transaction on every retry.
- **Namespaces.** A core names its group and output topics by their SPEC §4 names; the runner's
  `namespace` (`avro_schemas.topics.Namespace`) prefixes them, and the input, schema and state topics,
  the group id and the transactional id with them, so instances in different namespaces share nothing.
- **Shutdown.** SIGTERM or SIGINT sets a flag: the current batch finishes and commits, then the
  consumer closes (leaving the group, so its partitions move at once).
- **Never wedged.** Run as a program (`run(install_signals=True)`), every blocking Kafka call has a
  deadline of its own timeout plus `DEADLINE_MARGIN`, enforced by a `consumers.watchdog.Watchdog`
  thread: librdkafka does not always honour a call's timeout across a broker restart. Past a deadline,
  or `STOP_GRACE` seconds after SIGTERM/SIGINT with the main thread still stuck in C, the process exits
  with code 2 and one line, for a supervisor to restart it; the open transaction was not committed, so
  the restart loses and doubles nothing.
- **Metrics.** With `metrics` (a `consumers.metrics.ConsumerMetrics`), a `consumers.metering.RunnerMeter`
  wraps the core and is told of each transaction's begin and commit and, once per loop, looks at the lag;
  without, the runner does nothing more than before.
- **Zombies.** The transactional id is `<group id>-<instance id>`: a restarted instance with the same id
  fences its predecessor and aborts its open transaction at start; a different instance's takeover is
  fenced by the consumer group generation (KIP-447), and an abandoned transaction expires after
  `transaction.timeout.ms` (10 s here).

Every message printed passes through `scrub` (no secret from the settings appears in logs).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from avro_schemas.codec import SingleObjectCodec, epoch_summary_codec
from avro_schemas.errors import DecodeError, TelemetryError
from avro_schemas.models import EpochSummary
from avro_schemas.topics import DEFAULT_NAMESPACE, EPOCHS_TOPIC, Namespace, state_topic
from kafka_io.registry_client import RegistryClient
from kafka_io import (
    UNREADABLE, ensure_topics, group_consumer_config, kafka_error, max_message_bytes, partition_count, quiet_logger,
    read_to_end, reason, unreadable_batch_end,
)

from .dead_letter import PRODUCER_MESSAGE_MAX_BYTES, Rejection, decode_rule, record_limit
from .metering import RunnerMeter
from .metrics import ConsumerMetrics
from .schema_resolver import SchemaResolver, schema_topic_values
from .state_store import RunStates
from .validator import StreamTracker, Verdict, validate_record
from .watchdog import Watchdog

__all__ = [
    "ConsumerCore", "ConsumerError", "Output", "Rejection", "TransactionalRunner", "baseline_records",
]

log = logging.getLogger(__name__)

DEADLINE_MARGIN = 30.0
"""Seconds past a Kafka call's own timeout before the watchdog ends the process (see the docstring)."""
POLL_DEADLINE = 150.0
"""A poll's deadline: it runs the rebalance callbacks, which read committed offsets (40 s at most) and
state back (`RESTORE_TIMEOUT`)."""
RESTORE_TIMEOUT = 60.0
"""Seconds to read a partition's state back (`kafka_io.read_to_end`'s timeout), under a deadline too."""
STOP_GRACE = 25.0
"""Seconds a consumer has to stop after SIGTERM/SIGINT before the watchdog ends it: under compose's
`stop_grace_period` (30 s), so the consumer says why before it is killed."""
TRANSACTION_ATTEMPTS = 5


class ConsumerError(TelemetryError):
    """A consumer cannot run: Kafka unreachable, fenced by another instance, a fatal client error."""


@dataclass(frozen=True, slots=True)
class Output:
    """One message a core produces (inside the batch's transaction)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] | None = None


class ConsumerCore(Protocol):
    """A consumer group's logic, free of Kafka: what to output for each valid or rejected record."""

    group: str  # SPEC §4 names, both: the runner puts them in its namespace
    output_topics: tuple[str, ...]
    needs_model: bool  # False: `on_record` gets None instead of the typed record (the validator)

    def on_record(self, record: EpochSummary | None, verdict: Verdict) -> list[Output]:
        """Outputs for one valid, non-duplicate record (`verdict.record` holds it as a dict)."""
        ...

    def on_rejected(self, message: Any, rejection: Rejection) -> list[Output]:
        """Outputs for a message that did not decode or validate (the validator's dead letters)."""
        ...

    def run_state(self, run_id: str) -> Any:
        """The core's own JSON-able state of one run (None when it keeps none)."""
        ...

    def restore_run(self, run_id: str, state: Any) -> None:
        """Take back a `run_state` after a restart or a rebalance."""
        ...

    def forget_run(self, run_id: str) -> None:
        """Drop a run whose partition went to another instance."""
        ...

    # Optional: `on_idle(now: float) -> dict[str, list[Output]]`, called when a poll returns nothing and
    # every `idle_interval` seconds while busy, with `time.monotonic()`: outputs by run, produced in one
    # transaction with those runs' state (the drift group's idle summaries). A core without it is not asked.
    # Optional: `topic_configs: dict[str, dict[str, str]]`, the configs its output topics are created with,
    # and `limit_records(limits: dict[str, int])`, told at start the largest record (`dead_letter.record_size`)
    # each output topic accepts from this runner's producer (the validator cuts dead letters to fit).


def baseline_records(
    config: dict[str, Any], run_id: str, topic: str = EPOCHS_TOPIC, schemas: SchemaResolver | None = None
) -> list[EpochSummary]:
    """The valid records of run `run_id` on the epochs topic so far (the drift group's baseline run), either
    wire format (`schemas`: how writer schemas are found; default: the local versions only)."""
    schemas = schemas if schemas is not None else SchemaResolver()
    count = partition_count(config, topic)
    if not count:
        raise ConsumerError(f"topic {topic} does not exist, so baseline run {run_id} is not on it")
    key = run_id.encode("utf-8")
    tracker = StreamTracker()
    records = []
    values = [message.value() for message in read_to_end(config, [TopicPartition(topic, p) for p in range(count)])
              if message.key() == key]
    schemas.prepare(values)
    for value in values:
        try:
            verdict = tracker.check(validate_record(schemas.decode(value)))
        except DecodeError:
            continue
        if verdict.status == "valid" and verdict.run_id == run_id:
            records.append(EpochSummary.from_dict(verdict.record))
    return records


@dataclass
class RunnerCounts:
    """What a runner has done since it started."""

    consumed: int = 0
    processed: int = 0
    duplicates: int = 0
    rejected: int = 0
    outputs: int = 0
    batches: int = 0
    aborted: int = 0


@dataclass
class TransactionalRunner:
    """Runs a `ConsumerCore` as one instance of its consumer group (see the module docstring)."""

    config: dict[str, Any]
    core: ConsumerCore
    instance_id: str = "0"
    namespace: Namespace = DEFAULT_NAMESPACE
    input_topic: str | None = None  # default: the namespace's epochs topic
    # A transaction costs ~5-10 ms of round trips to the coordinator whatever its size, and each batch
    # writes one state message per run it touched: large batches amortise both (bench/kafka_validator.py).
    batch_size: int = 10_000
    poll_timeout: float = 0.5
    session_timeout_ms: int = 10_000
    transaction_timeout_ms: int = 10_000
    idle_interval: float = 1.0  # seconds between `on_idle` calls while batches keep coming
    codec: SingleObjectCodec = field(default_factory=epoch_summary_codec)
    err: TextIO | None = None
    scrub: Callable[[str], str] = lambda text: text
    counts: RunnerCounts = field(default_factory=RunnerCounts)
    metrics: ConsumerMetrics | None = None  # told what this runner does (see the module docstring)
    schema_registry: RegistryClient | None = None  # where Confluent-framed inputs' schema ids are looked up

    def __post_init__(self) -> None:
        self.stop_requested = False
        self._meter = None if self.metrics is None else RunnerMeter(self.metrics, self.core, self.counts)
        if self._meter is not None:
            self.core = self._meter.core  # the same core, its calls noted for the metrics
        self.states = RunStates(self.core, self._say)
        self.group_id = self.namespace.qualify(self.core.group)  # the core's group in this namespace
        if self.input_topic is None:
            self.input_topic = self.namespace.epochs_topic
        self._schemas_topic = self.namespace.schemas_topic
        self._state_topic = state_topic(self.group_id)
        # the core's output topic names -> this namespace's topics
        self._output_topics = {topic: self.namespace.qualify(topic) for topic in self.core.output_topics}
        self.schemas = SchemaResolver(
            self.codec, schema_topic_values(self.config, self.namespace.schemas_topic), self.schema_registry, self._say
        )
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._assigned: set[int] = set()
        self._errors_said: set[int] = set()
        self._skipped_to: dict[int, int] = {}  # input partition -> offset after the last unreadable message
        self._idle_asked_at = -1e9
        self._watchdog: Watchdog | None = None

    # ------------------------------------------------------------------------------------ output

    def _say(self, text: str) -> None:
        print(f"ppo-telemetry consume ({self.group_id}): {self.scrub(text)}", file=self.err or sys.stderr, flush=True)

    # ------------------------------------------------------------------------------------ setup

    def _on_client_error(self, error: KafkaError) -> None:
        # connection losses are retried by librdkafka; say so once per kind, not once per attempt
        key = error.code()
        if key in self._errors_said:
            return
        self._errors_said.add(key)
        self._say(f"Kafka client: {error.str()}" + ("" if error.fatal() else " (retrying)"))

    def _setup(self) -> None:
        partitions = partition_count(self.config, self.input_topic)
        if partitions is None:
            # the producer normally creates it; a consumer started first creates it with the default count
            ensure_topics(self.config, {self.input_topic: (3, {}), self._schemas_topic: (1, {"cleanup.policy": "compact"})})
            partitions = partition_count(self.config, self.input_topic) or 3
        topic_configs = getattr(self.core, "topic_configs", {})
        topics = {name: (partitions, dict(topic_configs.get(topic, {}))) for topic, name in self._output_topics.items()}
        topics[self._state_topic] = (partitions, {"cleanup.policy": "compact"})
        ensure_topics(self.config, topics)
        state_partitions = partition_count(self.config, self._state_topic)
        if state_partitions != partitions:
            raise ConsumerError(
                f"{self._state_topic} has {state_partitions} partitions but {self.input_topic} has {partitions}; "
                "they must match (state is kept partition for partition)"
            )
        self._producer = Producer(
            {
                **self.config,
                "transactional.id": f"{self.group_id}-{self.instance_id}",
                "message.max.bytes": self._producer_max_bytes,
                "transaction.timeout.ms": self.transaction_timeout_ms,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                # A batch begun right after the previous commit often meets CONCURRENT_TRANSACTIONS (the
                # coordinator is still writing the markers) and is retried after this backoff: 100 ms by
                # default, the p99 of publish -> alert (bench/alert_latency.py). Backoff still grows
                # exponentially to retry.backoff.max.ms (1 s) when a broker is away.
                "retry.backoff.ms": 10,
                "logger": quiet_logger(),
                "error_cb": self._on_client_error,
            }
        )
        self._limit_records()
        try:
            with self._deadline("init_transactions", 60):
                self._producer.init_transactions(60)
        except KafkaException as exc:
            raise ConsumerError(f"cannot start transactions: {reason(exc)}") from None
        self._consumer = Consumer({
            **group_consumer_config(self.config, self.group_id, self.session_timeout_ms),
            "partition.assignment.strategy": "cooperative-sticky",
            "error_cb": self._on_client_error,
        })
        self._consumer.subscribe([self.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke)

    @property
    def _producer_max_bytes(self) -> int:
        """The producer's `message.max.bytes`: the settings' when they have one, else as large as the DLQ takes."""
        return int(self.config.get("message.max.bytes", PRODUCER_MESSAGE_MAX_BYTES))

    def _limit_records(self) -> None:
        """Tell the core the largest record each output topic takes, from the topics' limits as the broker has them."""
        limit_records = getattr(self.core, "limit_records", None)
        if limit_records is not None:
            limits = max_message_bytes(self.config, self._output_topics.values())
            limit_records({
                topic: record_limit(limits[name], self._producer_max_bytes) for topic, name in self._output_topics.items()
            })

    # ------------------------------------------------------------------------------------ state

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        new = [tp.partition for tp in partitions]
        # Committed offsets first: read_committed, the fetch waits until a transaction still open on
        # these partitions (a previous owner's) has committed or aborted. Only then does the state
        # topic's stable end include that transaction's state, which goes with those offsets.
        if partitions:
            timeout = self.transaction_timeout_ms / 1000 + 30
            with self._deadline("committed offsets of the assigned partitions", timeout):
                consumer.committed(partitions, timeout=timeout)
        self._restore(new)
        self._assigned.update(new)
        if new:
            self._say(f"assigned partitions {sorted(new)} of {self.input_topic}")
        consumer.incremental_assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        self._forget(gone)
        self._assigned -= gone
        if gone:
            self._say(f"gave up partitions {sorted(gone)}")
        consumer.incremental_unassign(partitions)

    def _forget(self, partitions: set[int]) -> None:
        for partition in partitions:  # read again from a committed offset: a skip not committed is redone
            self._skipped_to.pop(partition, None)
        self.states.forget(partitions)

    def _restore(self, partitions: Iterable[int]) -> None:
        """Read the state partitions of `partitions` back into `states` (the last value per run wins)."""
        partitions = list(partitions)
        self._forget(set(partitions))
        state_partitions = [TopicPartition(self._state_topic, p) for p in partitions]
        with self._deadline("reading state back", RESTORE_TIMEOUT):
            messages = [
                (message.key().decode("utf-8", "replace"), message.partition(), message.value())
                for message in read_to_end(self.config, state_partitions, timeout=RESTORE_TIMEOUT)
                if message.key() is not None
            ]
        self.states.restore(messages)

    def _state_output(self, run_id: str) -> Output:
        return Output(self._state_topic, run_id.encode("utf-8"), self.states.message(run_id))

    # ------------------------------------------------------------------------------------ a batch

    def _handle(self, message: Any) -> tuple[list[Output], str | None]:
        """Outputs for one input message and the run whose state it may have changed."""
        try:
            record = self.schemas.decode(message.value())
        except DecodeError as exc:
            self.counts.rejected += 1
            return self.core.on_rejected(message, Rejection("decode", decode_rule(exc), exc.reason)), None
        verdict = self.states.tracker.check(validate_record(record))
        if verdict.status == "duplicate":
            self.counts.duplicates += 1
            return [], None
        if verdict.status == "invalid":
            self.counts.rejected += 1
            first = verdict.errors[0]
            text = "; ".join(e.message for e in verdict.errors)
            return self.core.on_rejected(message, Rejection("validate", first.rule, text)), None
        self.counts.processed += 1
        run_id = verdict.run_id
        self.states.processed(run_id, message.partition())
        # the typed model costs ~5 µs a record: built only for a core that reads it
        model = EpochSummary.from_dict(verdict.record) if self.core.needs_model else None
        return self.core.on_record(model, verdict), run_id

    def _produce(self, output: Output, partition: int | None = None) -> None:
        kwargs: dict[str, Any] = {"key": output.key, "value": output.value}
        if output.headers:
            kwargs["headers"] = output.headers
        if partition is not None:
            kwargs["partition"] = partition
        # a core's output topic in this namespace; the state topic is named in it already
        topic = self._output_topics.get(output.topic, output.topic)
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                return
            except BufferError:
                self._producer.poll(0.05)

    def _unreadable(self, message: Any, error: KafkaError, batch_position: int) -> tuple[list[Output], int] | None:
        """Outputs for a record batch the client cannot read (`kafka_io.UNREADABLE`), one dead letter per
        record, and the offset after it, where the consumer is seeked: librdkafka reports such a batch at
        its first offset at every fetch, so the group would stand still on it. None for other consume
        errors (said) and for a report in this batch of one already skipped (`batch_position`)."""
        partition, offset = message.partition(), message.offset()
        if error.code() not in UNREADABLE or offset is None:  # None: not about one batch
            if error.code() != KafkaError._PARTITION_EOF:
                self._say(f"consume error: {error.str()}")
            return None
        if offset < batch_position:
            return None  # consumed with the first report, before the seek past it
        # librdkafka drops what was fetched before a seek, so a report below an earlier batch's skip means
        # the consumer is still inside that record batch: it is longer than was found (a fresh reader could
        # read it): one more record at a time
        start = max(offset, self._skipped_to.get(partition, offset))
        end = max(start + 1, unreadable_batch_end(self.config, message.topic(), partition, offset))
        self._skipped_to[partition] = end
        self._consumer.seek(TopicPartition(message.topic(), partition, end))
        self.counts.rejected += end - start
        rejection = Rejection("decode", "unreadable_batch", error.str())
        # where each record was is all that is known of it
        unread = [Message(topic=message.topic(), partition=partition, offset=o) for o in range(start, end)]
        return [output for record in unread for output in self.core.on_rejected(record, rejection)], end

    def process_batch(self, messages: list[Any]) -> None:
        """One transaction: every message's outputs, the changed runs' state, the input offsets."""
        producer = self._producer
        meter = self._meter
        if meter is not None:
            meter.begin()
        producer.begin_transaction()
        touched: dict[str, int] = {}
        positions: dict[tuple[str, int], int] = {}
        outputs = 0
        handle = self._handle
        for message in messages:
            error = message.error()
            if error is not None:
                skipped = self._unreadable(message, error, positions.get((message.topic(), message.partition()), -1))
                if skipped is None:
                    continue
                (produced, next_offset), run_id = skipped, None
            else:
                produced, run_id = handle(message)
                next_offset = message.offset() + 1
            self.counts.consumed += 1
            partition = message.partition()
            positions[(message.topic(), partition)] = next_offset
            if produced:
                for output in produced:
                    self._produce(output)
                outputs += len(produced)
            if run_id is not None:
                touched[run_id] = partition
        for run_id, partition in touched.items():
            self._produce(self._state_output(run_id), partition)
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        if offsets:
            metadata = self._consumer.consumer_group_metadata()
            self._transactional(
                "send_offsets_to_transaction", 30,
                lambda timeout: producer.send_offsets_to_transaction(offsets, metadata, timeout),
            )
        self._transactional("commit_transaction", 60, producer.commit_transaction)
        if meter is not None:
            meter.committed(messages, len(positions))
        self.counts.outputs += outputs
        self.counts.batches += 1

    def process_idle(self, now: float) -> None:
        """Ask the core's `on_idle` (if it has one) and produce what it gives, with the runs' state, in one transaction."""
        self._idle_asked_at = now
        on_idle = getattr(self.core, "on_idle", None)
        produced = on_idle(now) if on_idle is not None else None
        if not produced:
            return
        producer = self._producer
        if self._meter is not None:
            self._meter.begin()
        producer.begin_transaction()
        outputs = 0
        for run_id, run_outputs in produced.items():
            for output in run_outputs:
                self._produce(output)
            outputs += len(run_outputs)
            partition = self.states.partition_of.get(run_id)
            if partition is not None:
                self._produce(self._state_output(run_id), partition)
        self._transactional("commit_transaction", 60, producer.commit_transaction)
        if self._meter is not None:
            self._meter.committed()
        self.counts.outputs += outputs
        self.counts.batches += 1

    def _rewind(self) -> None:
        """After an aborted transaction: back to the committed offsets and the committed state."""
        assignment = self._consumer.assignment()
        if not assignment:
            return
        with self._deadline("committed offsets after an abort", 30):
            committed = self._consumer.committed(assignment, timeout=30)
        for tp in committed:
            self._consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else -2))
        self._restore(tp.partition for tp in assignment)

    # ------------------------------------------------------------------------------------ the loop

    def stop_when_caught_up(self, ends: dict[int, int]) -> None:
        """Stop once this instance holds every partition in `ends` and has consumed up to those offsets
        (an idle callback: a batch consumed is committed before the next poll)."""
        if self._consumer is None or self._assigned != set(ends):
            return
        positions = self._consumer.position([TopicPartition(self.input_topic, p) for p in ends])
        # after a seek past an unreadable batch, the position is unknown until a message is consumed
        reached = {tp.partition: max(tp.offset, self._skipped_to.get(tp.partition, -1)) for tp in positions}
        if all(reached[p] >= end or end == 0 for p, end in ends.items()):
            self.stop_requested = True

    def request_stop(self, signum: int | None = None, frame: object = None) -> None:
        """Finish the current batch, commit it and stop (the signal handler)."""
        self.stop_requested = True

    def run(self, install_signals: bool = True, idle_callback: Callable[[], None] | None = None) -> int:
        """Consume until SIGTERM/SIGINT (or `stop_requested`); returns an exit code."""
        previous = {}
        if install_signals:
            previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
            self._watchdog = Watchdog(f"ppo-telemetry consume ({self.group_id})", stop_grace=STOP_GRACE)
            self._watchdog.start()
        try:
            self._setup()
            self._say(f"consuming {self.input_topic} as {self.group_id} (instance {self.instance_id})")
            consume = self._consumer.consume
            while not self.stop_requested:
                with self._deadline("poll", POLL_DEADLINE):
                    messages = consume(1, self.poll_timeout)
                    if messages and self.batch_size > 1:
                        messages += consume(self.batch_size - 1, 0)
                if not messages and idle_callback is not None:
                    idle_callback()
                if messages and not self.schemas.prepare(
                    (message.value() for message in messages if message.error() is None), lambda: self.stop_requested
                ):
                    break  # stopped while the Schema Registry was away: the batch is consumed again after a restart
                try:
                    if messages:
                        self.process_batch(messages)
                    now = time.monotonic()
                    if not messages or now - self._idle_asked_at >= self.idle_interval:
                        self.process_idle(now)
                    if self._meter is not None:
                        self._meter.tick(self._consumer, self._deadline)
                except KafkaException as exc:
                    error = kafka_error(exc)
                    if error is not None and error.txn_requires_abort():
                        self._say(f"transaction aborted, its batch or idle outputs will be redone: {error.str()}")
                        self._transactional("abort_transaction", 60, self._producer.abort_transaction)
                        self.counts.aborted += 1
                        self._rewind()
                        continue
                    raise ConsumerError(f"fatal Kafka error: {reason(exc)}") from None
            return 0
        except KafkaException as exc:  # from consume() or a rebalance callback: one line, not a traceback
            raise ConsumerError(f"Kafka error: {reason(exc)}") from None
        finally:
            self._close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._watchdog is not None:
                self._watchdog.close()
                self._watchdog = None

    def _close(self) -> None:
        if self._consumer is not None:
            try:
                with self._deadline("leaving the group", 30):
                    self._consumer.close()  # leaves the group: its partitions move at once
            except (KafkaException, RuntimeError):
                pass
            self._consumer = None
        if self._producer is not None:
            try:
                with self._deadline("flush", 10):
                    self._producer.flush(10)
            except KafkaException:
                pass  # a producer in a fatal state (fenced during a failover): the error that ended the run is told
            self._producer = None

    # ------------------------------------------------------------------------------------ deadlines

    def _deadline(self, what: str, timeout: float) -> AbstractContextManager[None]:
        """The call inside must return within `timeout` + `DEADLINE_MARGIN` seconds (when run as a program)."""
        if self._watchdog is None:
            return nullcontext()
        return self._watchdog.deadline(what, timeout + DEADLINE_MARGIN)

    def _transactional(self, what: str, timeout: float, call: Callable[[float], None]) -> None:
        """`call(timeout)`, a transactional call, repeated while librdkafka says its error is retriable (a
        timeout), each attempt under a deadline; abortable and fatal errors go to the caller (the documented
        pattern for commit_transaction)."""
        for attempt in range(TRANSACTION_ATTEMPTS):
            try:
                with self._deadline(what, timeout):
                    call(timeout)
                return
            except KafkaException as exc:
                error = kafka_error(exc)
                last = attempt == TRANSACTION_ATTEMPTS - 1
                if error is None or not error.retriable() or error.txn_requires_abort() or last:
                    raise

