"""`ppo-telemetry`: the command line of SPEC §7.

Exit codes: 0 success, 1 when any record is invalid (or a schema check fails), 2 for usage or I/O errors,
always with one line on stderr and never a traceback. Machine-readable output (`--json`) goes to stdout,
one JSON object per line; summaries go to stderr.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TextIO

from avro_schemas import DecodeError, EncodeError, EpochSummary, TelemetryError, epoch_summary_codec
from avro_schemas.codec import SINGLE_OBJECT, WIRE_FORMATS
from avro_schemas.ndjson import (
    DEFAULT_MAX_LINE_BYTES, OverlongLine, SegmentFollower, iter_file_lines, iter_records_from, iter_segment_lines,
    iter_stream_lines,
)
from consumers.validator import Validator, Verdict, overlong_line_error, validate_line_record

__all__ = ["main", "UsageError", "InputError"]

PROG = "ppo-telemetry"


class UsageError(TelemetryError):
    """The command line is wrong; exit 2."""


class InputError(TelemetryError):
    """An input cannot be read; exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the usage block would make the message two lines or more."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ---------------------------------------------------------------------------------------------- inputs


def _check_paths(paths: list[str]) -> None:
    if paths.count("-") > 1:
        raise UsageError("standard input ('-') can be named only once")
    for path in paths:
        if path != "-" and not Path(path).exists():
            raise InputError(f"no such file or directory: {path}")


def iter_lines(paths: list[str], max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[bytes | OverlongLine]:
    """The lines of every input in order: a file, a segment directory (offset order), or '-' for stdin.

    A line over `max_line_bytes` comes as an `OverlongLine`, skipped without being held in memory.
    """
    for path in paths:
        if path == "-":
            yield from iter_stream_lines(sys.stdin.buffer, max_line_bytes, name="standard input")
        elif Path(path).is_dir():
            yield from iter_segment_lines(Path(path), max_line_bytes)
        else:
            yield from iter_file_lines(Path(path), max_line_bytes=max_line_bytes)


def _numbered(
    paths: list[str], max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[tuple[int, bytes | OverlongLine]]:
    """(line number, line) for non-blank lines; numbers count every line of all inputs, blank ones too."""
    for number, line in enumerate(iter_lines(paths, max_line_bytes), start=1):
        if type(line) is not bytes:
            yield number, line  # an over-long line: never blank, never read
        elif line.strip():
            yield number, line.rstrip(b"\r")


def _emit(out: TextIO, obj: dict[str, Any]) -> None:
    out.write(json.dumps(obj, ensure_ascii=False))
    out.write("\n")


def _valid_records(
    paths: list[str], label: str, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[EpochSummary]:
    """The valid, non-duplicate records of the inputs as models; what is dropped is counted on stderr."""
    validator = Validator()
    for number, line in _numbered(paths, max_line_bytes):
        verdict = validator.validate_line(line)
        if verdict.status == "valid":
            yield EpochSummary.from_dict(verdict.record)
        elif verdict.status == "invalid":
            error = verdict.errors[0]
            print(f"{PROG}: {label} line {number}: skipped invalid record: {error.message}", file=sys.stderr)
    dropped = validator.counts["invalid"] + validator.counts["duplicate"]
    if dropped:
        print(
            f"{PROG}: {label}: used {validator.counts['valid']} records, skipped "
            f"{validator.counts['invalid']} invalid and {validator.counts['duplicate']} duplicate",
            file=sys.stderr,
        )


# -------------------------------------------------------------------------------------------- commands


def _human_verdict(number: int, verdict: Verdict) -> str:
    head = f"line {number}: {verdict.status}"
    if verdict.run_id is not None:
        head += f" run {verdict.run_id}"
    if verdict.log_stream_offset is not None:
        head += f" offset {verdict.log_stream_offset}"
    parts = [head]
    parts += [f"  error {e.field or '-'} [{e.rule}]: {e.message}" for e in verdict.errors]
    parts += [f"  warning: {w}" for w in verdict.warnings]
    return "\n".join(parts)


def cmd_validate(args: argparse.Namespace) -> int:
    """`validate PATH... [--json]`: one verdict per non-blank line; exit 1 when any record is invalid."""
    _check_paths(args.paths)
    validator = Validator()
    warnings = 0
    out = sys.stdout
    for number, line in _numbered(args.paths, args.max_line_bytes):
        verdict = validator.validate_line(line)
        warnings += len(verdict.warnings)
        if args.json:
            _emit(out, verdict.to_json_dict(number))
        elif verdict.status != "valid" or verdict.warnings:
            out.write(_human_verdict(number, verdict) + "\n")
    counts = validator.counts
    total = sum(counts.values())
    print(
        f"validate: {total} records: {counts['valid']} valid, {counts['invalid']} invalid, "
        f"{counts['duplicate']} duplicate; {warnings} warnings",
        file=sys.stderr,
    )
    return 1 if counts["invalid"] else 0


def _run_paths(paths: list[str]) -> list[str]:
    """Each path as given, but a directory without segments of its own stands for every directory below
    it that has some (a directory of run directories, e.g. one per seed), in name order."""
    from avro_schemas.ndjson import list_segments

    out = []
    for path in paths:
        if path == "-" or not Path(path).is_dir() or list_segments(Path(path)):
            out.append(path)
            continue
        below = sorted(str(d) for d in Path(path).rglob("*") if d.is_dir() and list_segments(d))
        if not below:
            raise InputError(f"no NDJSON segments in {path} or the directories below it")
        out += below
    return out


def cmd_drift(args: argparse.Namespace) -> int:
    """`drift --baseline PATH [--baseline PATH...] [--baseline-run ID...] PATH... [--json]`: one verdict
    object per current run (SPEC §5, §7); exit 0 whatever the verdicts."""
    from consumers.drift import Baseline, DriftTracker

    _check_paths([*args.baseline, *args.paths])
    records = [r.to_dict() for r in _valid_records(_run_paths(args.baseline), "baseline", args.max_line_bytes)]
    baseline = Baseline.from_records(records, args.baseline_run or None)
    tracker = DriftTracker(baseline)
    for record in _valid_records(_run_paths(args.paths), "current", args.max_line_bytes):
        tracker.observe(record.to_dict())
    for summary in tracker.summaries():
        doc = summary.to_json_dict()
        if args.json:
            _emit(sys.stdout, doc)
        else:
            sys.stdout.write(_human_drift(doc, baseline.window_steps))
    return 0


def _human_drift(doc: dict[str, Any], window_steps: int) -> str:
    lines = [
        f"run {doc['run_id']} vs baseline {', '.join(doc['baseline_run_ids'])}: "
        f"{doc['windows_compared']} windows of {window_steps:,} steps compared"
    ]
    for name, field in doc["fields"].items():
        verdict = field["verdict"]
        if verdict == "skipped":
            detail = doc["skipped_fields"][name]
        elif verdict == "differs":
            detail = f"{field['direction']} from step {field['first_step']:,}, effect {field['effect']:+.1f}"
            if field["relative_change"] is not None:
                detail += f", {field['relative_change']:+.1%} vs baseline"
        else:
            detail = f"largest effect {field['effect']:+.1f}"
        lines.append(f"  {name:<24} {verdict:<8} {detail}")
    return "\n".join(lines) + "\n"


def cmd_watch(args: argparse.Namespace) -> int:
    """`watch PATH [--rules FILE] [--json]`: one line per alert transition (SPEC §7), in record order."""
    from consumers.telemetry_watch import RulesConfig, Watch, load_rules

    _check_paths(args.paths)
    config = load_rules(args.rules) if args.rules is not None else RulesConfig.default()  # `--rules ""`: an error
    watch = Watch(config)
    for record in _valid_records(args.paths, "watch", args.max_line_bytes):
        for transition in watch.observe(record):
            doc = transition.to_json_dict()
            if args.json:
                _emit(sys.stdout, doc)
            else:
                sys.stdout.write(_human_transition(doc))
    return 0


def _human_transition(doc: dict[str, Any]) -> str:
    """One line per transition: where, which rule, what state, then the rule's own summary."""
    return (
        f"{doc['run_id']} epoch {doc['epoch']} step {doc['global_step']}: {doc['rule']} {doc['state'].upper()} "
        f"[{doc['severity']}] {doc['summary']}\n"
    )


def cmd_report(args: argparse.Namespace) -> int:
    """`report PATH | --bootstrap-servers B --run-id R [--baseline PATH...] [--baseline-run ID...] -o FILE`:
    one run's self-contained HTML report (SPEC §10; ppo_telemetry/report.py)."""
    from consumers.telemetry_watch import RulesConfig, load_rules
    from ppo_telemetry.report import (
        drift_baseline_runs, gather_report, kafka_inputs, render_html, watch_group_alerts,
    )

    from_kafka = args.bootstrap_servers is not None or args.kafka_config is not None
    if from_kafka == bool(args.paths):
        raise UsageError("report reads PATH... or Kafka (--bootstrap-servers or --kafka-config), one of them")
    if from_kafka and args.run_id is None:
        raise UsageError("report from Kafka needs --run-id")
    _check_paths([*args.baseline, *args.paths])
    rules = load_rules(args.rules) if args.rules is not None else RulesConfig.default()
    baseline = [r.to_dict() for r in _valid_records(_run_paths(args.baseline), "baseline", args.max_line_bytes)]
    baseline_runs = args.baseline_run
    if from_kafka:
        from consumers.runner import baseline_records

        settings = _kafka_settings(args.bootstrap_servers, args.kafka_config)
        config, namespace = settings.librdkafka_config(), _namespace(args.namespace, settings)
        schemas = _schema_resolver(args, config, namespace)
        if not args.baseline:  # runs on the epochs topic: --baseline-run, else those the drift group compared with
            baseline_runs = args.baseline_run or drift_baseline_runs(config, namespace.drift_topic, args.run_id)
            topic = namespace.epochs_topic
            baseline = [r.to_dict() for run in baseline_runs for r in baseline_records(config, run, topic, schemas)]
        inputs = kafka_inputs(config, namespace.epochs_topic, schemas, args.run_id)
        written = watch_group_alerts(config, namespace.alerts_topic, args.run_id)
        source = f"{namespace.epochs_topic} at {config.get('bootstrap.servers')}"
    else:
        validator = Validator()
        lines = _numbered(args.paths, args.max_line_bytes)
        inputs = ((f"line {number}", validator.validate_line(line)) for number, line in lines)
        source = ", ".join(args.paths)
        written = None
    report = gather_report(inputs, baseline, args.run_id, rules, baseline_runs, source, written)
    try:
        Path(args.output).write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    drift = report["drift"]
    compared = f"against {len(drift['baseline_run_ids'])} baseline runs" if drift else "not compared (no baseline)"
    print(
        f"report: run {report['run_id']}: {report['records']} records, {report['validity']['invalid']} invalid; "
        f"{len(report['alerts'])} alert spans; drift {compared}; wrote {args.output}",
        file=sys.stderr,
    )
    return 0


def cmd_codec_encode(args: argparse.Namespace) -> int:
    """`codec encode [PATH]`: NDJSON records in, one hex single-object message per line out."""
    paths = [args.path or "-"]
    _check_paths(paths)
    codec = epoch_summary_codec()
    failed = 0
    for number, line in _numbered(paths, args.max_line_bytes):
        verdict = validate_line_record(line)
        if verdict.status != "valid":
            failed += 1
            error = verdict.errors[0]
            print(f"codec encode: line {number}: not encoded: {error.field or 'record'}: {error.message}", file=sys.stderr)
            continue
        try:
            payload = codec.encode(verdict.record)
        except EncodeError as exc:
            failed += 1
            print(f"codec encode: line {number}: not encoded: {exc}", file=sys.stderr)
            continue
        sys.stdout.write(payload.hex() + "\n")
    return 1 if failed else 0


def cmd_codec_decode(args: argparse.Namespace) -> int:
    """`codec decode [PATH]`: hex single-object messages in, NDJSON records (writer version's fields) out."""
    paths = [args.path or "-"]
    _check_paths(paths)
    codec = epoch_summary_codec()
    failed = 0
    for number, line in _numbered(paths, args.max_line_bytes):
        if isinstance(line, OverlongLine):
            failed += 1
            print(f"codec decode: line {number}: {overlong_line_error(line).message}", file=sys.stderr)
            continue
        try:
            payload = bytes.fromhex(line.decode("ascii").strip())
            record = codec.decode(payload)
        except (ValueError, UnicodeDecodeError):
            failed += 1
            print(f"codec decode: line {number}: not hex", file=sys.stderr)
            continue
        except DecodeError as exc:
            failed += 1
            print(f"codec decode: line {number}: {exc.reason}", file=sys.stderr)
            continue
        _emit(sys.stdout, record)
    return 1 if failed else 0


def cmd_schemas_check(args: argparse.Namespace) -> int:
    """`schemas check`: every schema version against all earlier ones, FULL_TRANSITIVE."""
    from avro_schemas.compatibility import check_all
    from avro_schemas.registry import SCHEMA_DIR, load_family

    directory = Path(args.dir) if args.dir else SCHEMA_DIR
    if not directory.is_dir():
        raise InputError(f"no such schema directory: {directory}")
    problems = 0
    results = check_all(directory)
    if not results:
        raise InputError(f"no schema files (<family>_v<major>.<minor>.avsc) in {directory}")
    for family, messages in results.items():
        versions = [v.version for v in load_family(family, directory)]
        if messages:
            problems += len(messages)
            for message in messages:
                print(message)
        else:
            print(f"{family}: versions {', '.join(versions)} are FULL_TRANSITIVE compatible")
    return 1 if problems else 0


def cmd_tail(args: argparse.Namespace) -> int:
    """`tail DIR --from-offset N [--follow]`: the stored lines with offset ≥ N, across segments, in order.

    Lines go out exactly as stored, never a partial last one. With `--follow` it keeps polling until
    SIGINT or SIGTERM and then exits 0: stopping is how a follower ends, not a failure.
    """
    directory = Path(args.dir)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"not a directory: {args.dir}")
    sys.stdout.flush()
    out = sys.stdout.buffer
    if not args.follow:
        if not directory.exists():
            raise InputError(f"no such directory: {args.dir}")
        for offset, line in iter_records_from(directory, args.from_offset, args.max_line_bytes):
            _write_tailed(out, offset, line)
        out.flush()
        return 0

    stopping = False

    def _stop(signum: int, frame: object) -> None:
        # A flag, not an exception: an exception could land mid-write and leave a partial line out.
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        follower = SegmentFollower(directory, args.from_offset, max_line_bytes=args.max_line_bytes)
        while not stopping:
            batch = follower.poll()
            for offset, line in batch:
                _write_tailed(out, offset, line)
            out.flush()
            if not batch:
                time.sleep(args.poll_interval)  # idle: a backlog is drained without waiting
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _write_tailed(out: BinaryIO, offset: int, line: bytes | OverlongLine) -> None:
    """One stored line to `out` as it is; an over-long one is not printed but said on stderr."""
    if isinstance(line, OverlongLine):
        out.flush()  # keep stdout and stderr in offset order on a terminal
        print(f"{PROG} tail: offset {offset} not printed: {overlong_line_error(line).message}", file=sys.stderr)
    else:
        out.write(line + b"\n")


def cmd_train(args: argparse.Namespace) -> int:
    """`train ...`: PPO with telemetry to the NDJSON stream; 130 when stopped by Ctrl-C (stream flushed)."""
    from consumers.validator import is_valid_run_id
    from producer.faults import FAULTS_FILE, check_fault_steps
    from producer.publisher import PublisherProcess
    from ppo_telemetry.train import TrainingRun, config_from_args

    if not args.ndjson_dir and args.kafka is None:
        raise UsageError("train needs somewhere to publish: --ndjson-dir DIR, --kafka BOOTSTRAP or both")
    if args.run_id is not None and not is_valid_run_id(args.run_id):
        raise UsageError(f"--run-id must be 1-128 chars of [A-Za-z0-9._:-], got {args.run_id!r}")
    if args.replay and args.data_mode and args.data_mode != "replay":
        raise UsageError("--replay trains from recorded rollouts; it cannot be combined with --data-mode " + args.data_mode)
    if args.data_mode == "replay" and not args.replay:
        raise UsageError("--data-mode replay needs --replay MANIFEST")
    if args.replay and not Path(args.replay).exists():
        raise InputError(f"no such replay manifest: {args.replay}")
    if args.fault and (args.replay or args.data_mode == "replay"):
        raise UsageError("--fault starts at an environment step; --replay trains on recorded steps, so it takes none")
    if args.namespace is not None and args.kafka is None:
        raise UsageError("--namespace prefixes Kafka topic names; it needs --kafka")
    if (args.schema_registry is not None or args.wire_format != SINGLE_OBJECT) and args.kafka is None:
        raise UsageError("--wire-format and --schema-registry are about Kafka values; they need --kafka")
    config = config_from_args(args)
    check_fault_steps(config.faults, config.total_steps)  # FaultError: one line, exit 2
    # train writes records through a pipe to its publisher process: a dead publisher must be an error
    # (BrokenPipeError), not a silent death by SIGPIPE as for a filter whose reader went away
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    kafka = None
    if args.kafka is not None:
        from ppo_telemetry.recorder import kafka_target

        # a security mismatch said in seconds, before training starts (issue 9)
        kafka = kafka_target(args.kafka, args.kafka_config, args.namespace, args.partitions,
                             args.wire_format, args.schema_registry)
    publisher = PublisherProcess(
        Path(args.ndjson_dir) if args.ndjson_dir else None, args.ndjson_max_bytes, config.run_id,
        config.enable_telemetry_v1_1, kafka=kafka,
    )
    faults_file = Path(args.ndjson_dir) / FAULTS_FILE if args.ndjson_dir and config.faults else None
    return TrainingRun(config, publisher, faults_file=faults_file).run()


def _registry_client(args: argparse.Namespace):
    """The `--schema-registry` client (None without the flag); a malformed URL is a one-line error."""
    from kafka_io.registry_client import RegistryClient

    return RegistryClient(args.schema_registry) if getattr(args, "schema_registry", None) else None


def _schema_resolver(args: argparse.Namespace, config: dict[str, Any], namespace: Any):
    """How a Kafka command finds writer schemas: the namespace's schema topic, and `--schema-registry`."""
    from consumers.schema_resolver import SchemaResolver, schema_topic_values

    return SchemaResolver(schema_topic=schema_topic_values(config, namespace.schemas_topic),
                          registry=_registry_client(args))


def _kafka_settings(bootstrap: str | None, config_file: str | None):
    """Connection and security settings: the flag, over `PPO_TELEMETRY_KAFKA_*`, over the TOML file."""
    from ppo_telemetry.kafka_settings import KafkaSettings

    return KafkaSettings.resolve(bootstrap, config_file)


def _namespace(flag: str | None, settings: Any) -> Any:
    """The `Namespace` of a Kafka command: `--namespace`, over the settings' (`PPO_TELEMETRY_NAMESPACE`,
    over the settings file's `[kafka] namespace`), else the default (the SPEC's names)."""
    from ppo_telemetry.kafka_settings import namespace_of

    return namespace_of(flag, settings)


def _already_stopping(signum: int, frame: object) -> None:
    """A stop signal once the consumer has stopped consuming: it is leaving already."""


def cmd_consume(args: argparse.Namespace) -> int:
    """`consume validate|drift|watch`: one instance of a consumer group, until SIGTERM/SIGINT."""
    from consumers.runner import TransactionalRunner
    from ppo_telemetry.kafka_settings import scrub

    from ppo_telemetry.kafka_probe import check_listener

    if args.alertmanager is not None and args.group != "watch":
        raise UsageError(f"--alertmanager is for consume watch, not consume {args.group}")
    if args.wait_for_baseline and (args.group != "drift" or args.baseline or not args.baseline_run):
        raise UsageError("--wait-for-baseline is for consume drift with --baseline-run RUN_ID (and no --baseline)")
    if args.alertmanager is not None:
        from consumers.alertmanager import alerts_endpoint

        alerts_endpoint(args.alertmanager)  # a bad URL: one line, exit 2, before anything starts
    settings = _kafka_settings(args.bootstrap_servers, args.kafka_config)
    config = settings.librdkafka_config()
    namespace = _namespace(args.namespace, settings)
    check_listener(config)  # a security mismatch said in seconds, not a transport failure after 30 (issue 9)
    if args.group == "validate":
        from consumers.groups import ValidatorGroup

        core = ValidatorGroup()
    elif args.group == "drift":
        core = _drift_group(args, config, namespace)
        if core is None:
            print(f"{PROG} consume drift: stopped while waiting for the baseline", file=sys.stderr)
            return 0
    else:
        from consumers.groups import WatchGroup
        from consumers.telemetry_watch import load_rules

        core = WatchGroup(load_rules(args.rules) if args.rules is not None else None)
    metrics = None
    if args.metrics_port is not None:
        from consumers.metrics import ConsumerMetrics

        metrics = ConsumerMetrics(args.group)
    runner = TransactionalRunner(
        config, core, instance_id=args.instance_id, namespace=namespace, batch_size=args.batch_size,
        session_timeout_ms=args.session_timeout_ms, scrub=lambda text: scrub(text, config), metrics=metrics,
        schema_registry=_registry_client(args),
    )
    metrics_server = metrics.serve(args.metrics_port, args.metrics_host) if metrics is not None else None
    # Until this command returns, a SIGTERM or SIGINT asks for nothing more than the runner already does:
    # the runner's handlers hand back to these when it returns, not to the default, which would kill a
    # process that is already leaving (its clients closing, its last line not yet printed) by the signal.
    previous = {sig: signal.signal(sig, _already_stopping) for sig in (signal.SIGTERM, signal.SIGINT)}
    poster = None
    try:
        poster = _alertmanager_poster(args, config, namespace, runner, metrics.registry if metrics is not None else None)
        code = _run_consumer(runner, args.group, config)
        if poster is not None and poster.error is not None:
            raise TelemetryError(poster.error)
        return code
    finally:
        if poster is not None:
            poster.stop()
        del runner, poster  # the runner's clients are destroyed while the handlers still hold (the poster refers to it)
        if metrics_server is not None:
            metrics_server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _alertmanager_poster(
    args: argparse.Namespace, config: dict[str, Any], namespace: Any, runner: Any, registry: Any
) -> Any:
    """With `--alertmanager URL`: the poster of the watch group's transitions, started (consumers/alertmanager.py);
    its posts counted in `registry` (the exporter's, with `--metrics-port`)."""
    if args.alertmanager is None:
        return None
    from consumers.alertmanager import AlertmanagerPoster, poster_group
    from ppo_telemetry.kafka_settings import scrub

    def say(text: str) -> None:
        print(f"{PROG} consume ({runner.group_id}): alertmanager: {scrub(text, config)}", file=sys.stderr, flush=True)

    poster = AlertmanagerPoster(
        args.alertmanager, config, namespace.alerts_topic, poster_group(runner.group_id), say,
        registry=registry, on_fatal=lambda message: runner.request_stop(), session_timeout_ms=args.session_timeout_ms,
    )
    poster.start()
    return poster


def _run_consumer(runner: Any, group: str, config: dict[str, str]) -> int:
    """Run a consumer group's runner; the last line on stderr counts what it did."""
    from ppo_telemetry.kafka_settings import scrub

    try:
        code = runner.run()
    except TelemetryError as exc:
        raise TelemetryError(scrub(str(exc), config)) from None
    counts = runner.counts
    print(
        f"{PROG} consume {group}: stopped after {counts.consumed} records: {counts.processed} processed, "
        f"{counts.rejected} rejected, {counts.duplicates} duplicate; {counts.outputs} outputs in "
        f"{counts.batches} transactions",
        file=sys.stderr,
    )
    return code


def _drift_group(args: argparse.Namespace, config: dict[str, Any], namespace: Any):
    from consumers.drift import Baseline
    from consumers.groups import DriftGroup

    if not args.baseline and not args.baseline_run:
        raise UsageError("consume drift needs --baseline PATH or --baseline-run RUN_ID")
    if args.baseline:
        _check_paths(args.baseline)
        records = [r.to_dict() for r in _valid_records(_run_paths(args.baseline), "baseline")]
        return DriftGroup(Baseline.from_records(records, args.baseline_run or None), idle_seconds=args.idle_seconds)
    from consumers.runner import baseline_records

    if args.wait_for_baseline:
        waited = _wait_for_baseline(args, config, namespace)
        if waited is None:
            return None
        return DriftGroup(Baseline.from_records(waited, args.baseline_run), idle_seconds=args.idle_seconds)
    records = []
    for run_id in dict.fromkeys(args.baseline_run):
        found = baseline_records(config, run_id, namespace.epochs_topic, _schema_resolver(args, config, namespace))
        if not found:
            raise InputError(f"baseline run {run_id!r} not found on {namespace.epochs_topic} (no valid records; "
                             "--wait-for-baseline waits for it)")
        records += [r.to_dict() for r in found]
    return DriftGroup(Baseline.from_records(records, args.baseline_run), idle_seconds=args.idle_seconds)


def _wait_for_baseline(args: argparse.Namespace, config: dict[str, Any], namespace: Any) -> list[dict] | None:
    """`--wait-for-baseline`: the --baseline-run runs' records once each is on the epochs topic and quiet for
    --idle-seconds (consumers/baseline_wait.py); None if a SIGTERM or SIGINT comes first."""
    import threading

    from consumers.baseline_wait import wait_for_baseline_runs
    from consumers.runner import baseline_records
    from kafka_io import partition_count

    topic = namespace.epochs_topic
    schemas = _schema_resolver(args, config, namespace)

    def fetch(run_id: str) -> list[dict]:
        if not partition_count(config, topic):  # a fresh broker: nothing has created the topic yet
            return []
        return [record.to_dict() for record in baseline_records(config, run_id, topic, schemas)]

    def say(text: str) -> None:
        print(f"{PROG} consume drift ({topic}): {text}", file=sys.stderr, flush=True)

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return wait_for_baseline_runs(fetch, list(dict.fromkeys(args.baseline_run)), args.idle_seconds, stop, say)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_broker(args: argparse.Namespace) -> int:
    """`broker start|stop|status`: the local KRaft broker, one node or a cluster (`--nodes`)."""
    from ppo_telemetry.broker import LocalBroker

    # stop and status cover the nodes the port's data records, whatever --nodes says
    starting = args.broker_command == "start"
    broker = LocalBroker(port=args.port, nodes=args.nodes if starting else None, secure=args.secure if starting else None)
    if starting:
        address = broker.start()
        print(f"{PROG} broker: running ({_broker_pids(broker)}, data in {broker.run_dir})", file=sys.stderr)
        if broker.is_secure:
            print(f"{PROG} broker: SASL_SSL (SCRAM-SHA-512) with ACLs; each role's settings, for --kafka-config: "
                  f"{broker.secrets.directory}/{{trainer,validator,drift,watch,admin}}.toml", file=sys.stderr)
        print(address)
        return 0
    if args.broker_command == "stop":
        stopped = broker.stop()
        nodes = f" ({broker.node_count} nodes)" if broker.node_count > 1 else ""
        print(f"{PROG} broker: {'stopped' if stopped else 'none was running'} on port {args.port}{nodes}",
              file=sys.stderr)
        return 0
    if broker.running():
        print(f"{PROG} broker: running ({_broker_pids(broker)})", file=sys.stderr)
        print(broker.bootstrap)
        return 0
    down = [node_id for node_id, pid in broker.pids().items() if pid is None]
    if len(down) < broker.node_count:
        state = f"down: {', '.join(f'node {n}' for n in down)}" if down else "not every node answers yet"
        print(f"{PROG} broker: {broker.node_count - len(down)} of {broker.node_count} nodes running on port "
              f"{args.port} ({state})", file=sys.stderr)
        return 1
    print(f"{PROG} broker: not running on port {args.port}", file=sys.stderr)
    return 1


def _broker_pids(broker: Any) -> str:
    """`pid N` for one node, `3 nodes, pids 1: N, 2: N, 3: N` for a cluster."""
    pids = broker.pids()
    if len(pids) == 1:
        return f"pid {next(iter(pids.values()))}"
    return f"{len(pids)} nodes, pids " + ", ".join(f"{node_id}: {pid}" for node_id, pid in pids.items())


def cmd_registry(args: argparse.Namespace) -> int:
    """`registry start|stop|status`: the local Schema Registry (Apicurio Registry, Confluent-compatible API)."""
    from ppo_telemetry.registry_service import LocalRegistry

    registry = LocalRegistry(port=args.port)
    if args.registry_command == "start":
        url = registry.start()
        print(f"{PROG} registry: running (pid {registry.pid()}, in memory: a restart forgets the schemas; "
              f"log {registry.log_file})", file=sys.stderr)
        print(url)
        return 0
    if args.registry_command == "stop":
        stopped = registry.stop()
        print(f"{PROG} registry: {'stopped' if stopped else 'none was running'} on port {args.port}", file=sys.stderr)
        return 0
    if registry.running():
        print(f"{PROG} registry: running (pid {registry.pid()})", file=sys.stderr)
        print(registry.url)
        return 0
    state = "starting or not answering" if registry.pid() is not None else "not running"
    print(f"{PROG} registry: {state} on port {args.port}", file=sys.stderr)
    return 1


def cmd_demo(args: argparse.Namespace) -> int:
    """`demo`: the whole pipeline end to end, in a fresh namespace inside the configured one."""
    from ppo_telemetry.demo import run_demo

    settings = _kafka_settings(None, args.kafka_config)
    parent = _namespace(args.namespace, settings)
    if args.kafka_config is None:
        return run_demo(sys.stdout, parent=parent, keep_topics=args.keep_topics)
    return run_demo(sys.stdout, parent=parent, keep_topics=args.keep_topics, settings=settings,
                    settings_file=args.kafka_config)


# ---------------------------------------------------------------------------------------------- parser


def _int_at_least(minimum: int):
    """An argparse type: an integer ≥ `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be ≥ {minimum}: {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_offset = _int_at_least(0)


def _port(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65535."""
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (1 to 65535): {value}")
    return value


def _fault(text: str):
    """An argparse type: a `--fault NAME@STEP[:VALUE]` (SPEC §8) as a `producer.faults.Fault`."""
    from producer.faults import FaultError, parse_fault

    try:
        return parse_fault(text)
    except FaultError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _namespace_name(text: str) -> str:
    """An argparse type: a namespace name (`avro_schemas.topics.check_namespace_name`; empty: the default)."""
    from avro_schemas.topics import NamespaceError, check_namespace_name

    try:
        return check_namespace_name(text)
    except NamespaceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_NAMESPACE_HELP = (
    "prefix of every topic, group id and transactional id (NAME.ppo.telemetry.epochs, NAME.ppo-telemetry-validator; "
    "letters, digits, '.', '-'); default: $PPO_TELEMETRY_NAMESPACE, else the settings file's [kafka] namespace, "
    "else none (the SPEC's names)"
)
_SCHEMA_REGISTRY_HELP = (
    "a Confluent-compatible Schema Registry API (Apicurio: http://HOST:PORT/apis/ccompat/v7): where Confluent-framed "
    "records' schemas are registered (train) and looked up by id (SPEC §11)"
)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0: {text}")
    return value


def _add_max_line_bytes(
    parser: argparse.ArgumentParser, over: str = "as one invalid record (rule line_too_long)"
) -> None:
    """`--max-line-bytes N` for a command that reads NDJSON lines; `over` says what becomes of a longer line."""
    parser.add_argument(
        "--max-line-bytes", type=_positive_int, default=DEFAULT_MAX_LINE_BYTES, metavar="N",
        help=f"longest line read, in bytes (default 1 MiB, Kafka's default largest message); a longer line is "
             f"skipped unread {over}",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = _Parser(prog=PROG, description="PPO training-health telemetry: validate, drift, watch, codec, schemas.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("validate", help="validate NDJSON records (SPEC §2)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="NDJSON file, segment directory, or - for stdin")
    p.add_argument("--json", action="store_true", help="one JSON verdict per input line")
    _add_max_line_bytes(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("drift", help="does a run differ from its baseline runs beyond seed noise (SPEC §5)")
    p.add_argument("--baseline", required=True, action="append", metavar="PATH",
                   help="NDJSON file or directory with baseline runs (repeatable; a directory of run directories too)")
    p.add_argument("--baseline-run", action="append", default=[], metavar="RUN_ID",
                   help="use only this run of the baseline data (repeatable; default: every run in it)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true", help="one JSON summary per run")
    _add_max_line_bytes(p)
    p.set_defaults(func=cmd_drift)

    p = sub.add_parser("watch", help="alert transitions of the health rules (SPEC §6)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--rules", metavar="FILE", help="TOML file overriding the default rules")
    p.add_argument("--json", action="store_true", help="one JSON object per transition")
    _add_max_line_bytes(p)
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("report", help="one run as a self-contained HTML page: metrics, baseline band, alerts, "
                                      "drift, validity (SPEC §10)")
    p.add_argument("paths", nargs="*", metavar="PATH", help="NDJSON file or segment directory (or read Kafka instead)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.html", help="the page to write")
    p.add_argument("--run-id", metavar="RUN_ID", help="the run to report on (needed when the input holds several)")
    p.add_argument("--baseline", action="append", default=[], metavar="PATH",
                   help="NDJSON of baseline runs (repeatable; a directory of run directories too)")
    p.add_argument("--baseline-run", action="append", default=[], metavar="RUN_ID",
                   help="a baseline run (repeatable): picked out of --baseline, or read from the epochs topic")
    p.add_argument("--rules", metavar="FILE", help="alert rules TOML (SPEC §6)")
    p.add_argument("--bootstrap-servers", metavar="B", help="read the run from Kafka's epochs topic")
    p.add_argument("--kafka-config", metavar="TOML", help="Kafka connection and security settings ([kafka] table)")
    p.add_argument("--namespace", type=_namespace_name, metavar="NAME", help=_NAMESPACE_HELP)
    p.add_argument("--schema-registry", metavar="URL", help=_SCHEMA_REGISTRY_HELP)
    _add_max_line_bytes(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("codec", help="single-object Avro encode/decode")
    codec_sub = p.add_subparsers(dest="codec_command", required=True, parser_class=_Parser, metavar="ACTION")
    e = codec_sub.add_parser("encode", help="NDJSON in, hex messages out")
    e.add_argument("path", nargs="?", metavar="PATH", help="input file (default: stdin)")
    _add_max_line_bytes(e)
    e.set_defaults(func=cmd_codec_encode)
    d = codec_sub.add_parser("decode", help="hex messages in, NDJSON out")
    d.add_argument("path", nargs="?", metavar="PATH", help="input file (default: stdin)")
    _add_max_line_bytes(d)
    d.set_defaults(func=cmd_codec_decode)

    p = sub.add_parser("schemas", help="schema compatibility")
    schemas_sub = p.add_subparsers(dest="schemas_command", required=True, parser_class=_Parser, metavar="ACTION")
    c = schemas_sub.add_parser("check", help="FULL_TRANSITIVE check of every schema family")
    c.add_argument("--dir", metavar="DIR", help="schema directory (default: the installed avro_schemas)")
    c.set_defaults(func=cmd_schemas_check)

    p = sub.add_parser("tail", help="NDJSON records from an offset on, across segments (SPEC §3)")
    p.add_argument("dir", metavar="DIR", help="the segment directory")
    p.add_argument("--from-offset", required=True, type=_offset, metavar="N", help="first log_stream_offset to print")
    p.add_argument("--follow", action="store_true", help="keep printing new records until SIGINT/SIGTERM")
    p.add_argument(
        "--poll-interval", type=_positive_seconds, default=0.2, metavar="SECONDS", help="idle wait between polls"
    )
    _add_max_line_bytes(p, over="and not printed, with one line on stderr naming its offset")
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("train", help="run PPO and publish telemetry")
    p.add_argument("--ndjson-dir", metavar="DIR", help="write the NDJSON stream (rotating segments) here")
    p.add_argument("--ndjson-max-bytes", type=_positive_int, default=16 * 1024 * 1024, metavar="N",
                   help="rotate segments at this size (default 16 MiB)")
    p.add_argument("--telemetry-version", choices=("1.0", "1.1"), default="1.1")
    p.add_argument("--env", default="Conflict-v0", help="Gymnasium environment id (default Conflict-v0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--total-steps", type=_positive_int, metavar="N", help="environment ticks (default: the preset's)")
    p.add_argument("--run-id", metavar="RUN_ID", help="default: <env>.seed<N>.<UTC time>")
    p.add_argument("--data-mode", choices=("mixed", "rollout", "replay"), help="default mixed (replay with --replay)")
    p.add_argument("--replay", metavar="MANIFEST", help="train from recorded rollouts (data_mode replay)")
    p.add_argument("--record-rollouts", metavar="DIR", help="record every capture for later --replay")
    p.add_argument("--fault", action="append", type=_fault, default=[], metavar="NAME@STEP[:VALUE]",
                   help="inject a training fault from environment step STEP on (SPEC §8; repeatable): "
                        "lr_spike, clip_off, negative_entropy_bonus, reward_scale, advantage_sign, value_reset, "
                        "reward_noise, grad_clip_off; listed in faults.json beside the segments")
    p.add_argument("--num-envs", type=_positive_int, metavar="N")
    p.add_argument("--num-steps", type=_positive_int, metavar="N", help="vector steps per capture")
    p.add_argument("--update-epochs", type=_positive_int, metavar="N")
    p.add_argument("--num-minibatches", type=_positive_int, metavar="N")
    p.add_argument("--learning-rate", type=float, metavar="LR")
    p.add_argument("--ent-coef", type=float, metavar="C")
    p.add_argument("--target-kl", type=float, metavar="KL")
    p.add_argument("--kafka", metavar="BOOTSTRAP", help="publish to Kafka (alone or with --ndjson-dir)")
    p.add_argument("--kafka-config", metavar="TOML", help="Kafka connection and security settings ([kafka] table)")
    p.add_argument("--partitions", type=_positive_int, default=3, metavar="N",
                   help="partitions of the epochs topic when train creates it (default 3)")
    p.add_argument("--namespace", type=_namespace_name, metavar="NAME", help=_NAMESPACE_HELP)
    p.add_argument("--wire-format", choices=WIRE_FORMATS, default=SINGLE_OBJECT,
                   help="Kafka values as Avro single-object (default) or in the Confluent wire format, the schema "
                        "registered with --schema-registry (SPEC §11)")
    p.add_argument("--schema-registry", metavar="URL", help=_SCHEMA_REGISTRY_HELP)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("consume", help="run one instance of a Kafka consumer group (SPEC §4)")
    p.add_argument("group", choices=("validate", "drift", "watch"))
    p.add_argument("--bootstrap-servers", metavar="B", help="default: the settings' (127.0.0.1:9092)")
    p.add_argument("--kafka-config", metavar="TOML", help="Kafka connection and security settings ([kafka] table)")
    p.add_argument("--baseline", action="append", default=[], metavar="PATH",
                   help="drift: NDJSON of baseline runs (repeatable)")
    p.add_argument("--baseline-run", action="append", default=[], metavar="RUN_ID",
                   help="drift: a baseline run (repeatable), read from the epochs topic, or picked out of --baseline")
    p.add_argument("--idle-seconds", type=_positive_seconds, default=30.0, metavar="S",
                   help="drift: a run with no record for this long gets its summary (default 30)")
    p.add_argument("--wait-for-baseline", action="store_true",
                   help="drift: wait until each --baseline-run is on the epochs topic, with no new record for "
                        "--idle-seconds, instead of exiting when it is not there (docs/deployment.md)")
    p.add_argument("--rules", metavar="FILE", help="watch: rules TOML (SPEC §6)")
    p.add_argument("--alertmanager", metavar="URL",
                   help="watch: post each alert transition to the Alertmanager at URL (v2 API, SPEC §10)")
    p.add_argument("--instance-id", default="0", metavar="ID",
                   help="this instance's name in the group; a restart with the same id fences its predecessor")
    p.add_argument("--batch-size", type=_positive_int, default=10_000, metavar="N",
                   help="most records per transaction (default 10,000; a trickle is not held back)")
    p.add_argument("--session-timeout-ms", type=_positive_int, default=10_000, metavar="MS")
    p.add_argument("--namespace", type=_namespace_name, metavar="NAME", help=_NAMESPACE_HELP)
    p.add_argument("--metrics-port", type=_port, metavar="P",
                   help="serve Prometheus metrics on http://HOST:P/metrics (default: not served)")
    p.add_argument("--metrics-host", default="0.0.0.0", metavar="HOST",
                   help="the address the metrics listen on (default 0.0.0.0: every interface)")
    p.add_argument("--schema-registry", metavar="URL", help=_SCHEMA_REGISTRY_HELP)
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("broker", help="a local KRaft Kafka broker, one node or a cluster (no Docker needed)")
    p.add_argument("broker_command", choices=("start", "stop", "status"))
    p.add_argument("--port", type=_positive_int, default=9092, metavar="P",
                   help="the first node's client port (default 9092); node k listens on P+2(k-1), its controller "
                        "on the port after")
    p.add_argument("--nodes", type=_positive_int, metavar="N",
                   help="start: nodes on loopback (1 to 5; 3: replication factor 3, min.insync.replicas 2); "
                        "default: as the port's data was started, else 1")
    p.add_argument("--secure", action="store_true",
                   help="start: SASL_SSL with SCRAM-SHA-512, a CA made at start, one principal per role with ACLs "
                        "(SPEC §11); each role's settings go to <data dir>/secrets/<role>.toml")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("registry", help="a local Schema Registry (Apicurio, Confluent-compatible API; Java 21+)")
    p.add_argument("registry_command", choices=("start", "stop", "status"))
    p.add_argument("--port", type=_port, default=8081, metavar="P",
                   help="its port on 127.0.0.1 (default 8081); start prints the URL for --schema-registry")
    p.set_defaults(func=cmd_registry)

    p = sub.add_parser("demo", help="run the pipeline end to end, in a fresh namespace of its own")
    p.add_argument("--namespace", type=_namespace_name, metavar="NAME",
                   help="run inside this namespace (as NAME.demo-<time>-<random>); default: as for consume")
    p.add_argument("--kafka-config", metavar="TOML",
                   help="Kafka connection and security settings ([kafka] table; on a secured broker: the admin's, "
                        "as the demo creates and deletes topics of its own namespace)")
    p.add_argument("--keep-topics", action="store_true",
                   help="keep the demo's topics and groups at the end (default: deleted; a failed demo keeps them)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ppo-telemetry` console script; returns the exit code."""
    # A reader that closes the pipe early (`| head`) ends us quietly, as for any Unix filter. The
    # previous disposition comes back on return, for callers that run main() in their own process.
    previous_sigpipe = signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (UsageError, InputError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except TelemetryError as exc:  # rules file, baseline, stream read errors: usage or I/O by nature
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"{PROG}: error: {exc.strerror or exc}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGPIPE, previous_sigpipe)


if __name__ == "__main__":
    sys.exit(main())
