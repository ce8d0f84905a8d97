"""`ppo-telemetry report` (SPEC §10): one run's records as one self-contained HTML page.

Two layers. `gather_report` is the pure core: validated inputs (`(where, Verdict)` pairs, from NDJSON
lines or Kafka messages), baseline records and the alert rules in, a plain JSON-able dict out: every
metric's series against `global_step`, the baseline's band per drift window, the alert spans (the watch
core's firing → resolved intervals), the drift verdicts (the drift core against the baseline) and the
validity summary (the validator's verdicts, per rule). `render_html` turns that dict into the page:
inline SVG and CSS, the dict itself embedded as JSON (`<script type="application/json">`, never
executed); no script runs, nothing is fetched. From Kafka, `kafka_inputs` reads one run's records from
the epochs topic for the core, `drift_baseline_runs` the baseline runs the drift group compared it
with, and `watch_group_alerts` the watch group's transitions. docs/operations.md ("Run report") says
what the page shows and how.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from avro_schemas.errors import TelemetryError
from avro_schemas.fields import FIELDS
from avro_schemas.models import EpochSummary
from consumers.drift import DRIFT_FIELDS, FIELD_SPECS, Baseline, DriftTracker, FieldSpec
from consumers.telemetry_watch import RulesConfig, Transition, Watch
from consumers.validator import FieldError, Verdict

__all__ = [
    "METRICS",
    "ReportError",
    "gather_report",
    "render_html",
    "kafka_inputs",
    "drift_baseline_runs",
    "watch_group_alerts",
]

_NOT_PLOTTED = frozenset({"epoch", "global_step", "timestamp_ms", "log_stream_offset", "cycle_id"})
METRICS: tuple[str, ...] = tuple(
    name for name, row in FIELDS.items() if row.avro_type in ("double", "int", "long") and name not in _NOT_PLOTTED
)
"""The plotted fields, in schema order: every number of the record but its bookkeeping (epoch, step,
time, offsets, cycle counter)."""

EXAMPLES_KEPT = 20
"""Invalid inputs listed by place and message in the validity summary (all are counted)."""


class ReportError(TelemetryError):
    """No run to report on, an unknown or ambiguous run, or a Kafka topic that is not there."""


# ------------------------------------------------------------------------------------------ validity


@dataclass
class _Tally:
    """Verdicts of one run (or of the inputs that belong to no plotted run)."""

    counts: Counter = field(default_factory=lambda: Counter(valid=0, invalid=0, duplicate=0))
    rules: Counter = field(default_factory=Counter)
    warnings: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, position: int, where: str, verdict: Verdict) -> None:
        self.counts[verdict.status] += 1
        self.warnings += len(verdict.warnings)
        if verdict.status != "invalid":
            return
        self.rules.update({error.rule for error in verdict.errors})
        if len(self.examples) < EXAMPLES_KEPT:
            first = verdict.errors[0]
            self.examples.append({"position": position, "where": where, "run_id": verdict.run_id, "rule": first.rule,
                                  "field": first.field, "message": first.message})

    def merged(self, other: _Tally) -> _Tally:
        return _Tally(self.counts + other.counts + Counter(valid=0, invalid=0, duplicate=0), self.rules + other.rules,
                      self.warnings + other.warnings,
                      sorted(self.examples + other.examples, key=lambda e: e["position"])[:EXAMPLES_KEPT])


def _validity(tally: _Tally, unattributed: _Tally) -> dict[str, Any]:
    return {
        "valid": tally.counts["valid"],
        "invalid": tally.counts["invalid"],
        "duplicate": tally.counts["duplicate"],
        "warnings": tally.warnings,
        "invalid_by_rule": dict(sorted(tally.rules.items(), key=lambda item: (-item[1], item[0]))),
        "examples": tally.examples,
        "of_no_run": unattributed.counts["invalid"],
    }


# ------------------------------------------------------------------------------------------ gathering


def gather_report(
    inputs: Iterable[tuple[str, Verdict]],
    baseline_records: Iterable[Mapping[str, Any]] = (),
    run_id: str | None = None,
    rules: RulesConfig | None = None,
    baseline_runs: Sequence[str] = (),
    source: str = "",
    written_alerts: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The report of one run as a plain dict (what `render_html` draws and the page embeds as JSON).

    `inputs`: every input item in stream order with its place (`"line 12"`, `"partition 0 offset 5"`)
    and its validator verdict (duplicates already marked). The run is `run_id`, else the one run whose
    valid records the inputs hold; `ReportError` when there is none, or several and no `run_id`.
    Records of other runs are left out; invalid items of no plotted run (not JSON, no run_id, a run_id
    with no valid record) count in the validity summary as `of_no_run`. `baseline_records`: the
    baseline runs' valid records (dicts), `baseline_runs` picking some of them; none: no band and no
    drift verdicts. `written_alerts`: the run's transitions as the watch group wrote them (the alerts
    topic), compared with the watch core's over these records in `alerts_written` (None: not compared).
    """
    records: dict[str, list[dict[str, Any]]] = {}
    tallies: dict[str | None, _Tally] = {}
    for position, (where, verdict) in enumerate(inputs):
        tallies.setdefault(verdict.run_id, _Tally()).add(position, where, verdict)
        if verdict.status == "valid":
            records.setdefault(verdict.run_id, []).append(verdict.record)
    chosen = _pick_run(list(records), run_id, source, tallies.get(run_id))
    unattributed = _Tally()
    for key, tally in tallies.items():
        if key not in records:
            unattributed = unattributed.merged(tally)
    run_records = records[chosen]
    baseline = _baseline(baseline_records, baseline_runs)
    transitions = _transitions(run_records, rules)
    return {
        "run_id": chosen,
        "source": source,
        "records": len(run_records),
        "first_step": min(r["global_step"] for r in run_records),
        "last_step": max(r["global_step"] for r in run_records),
        "first_timestamp_ms": run_records[0]["timestamp_ms"],
        "last_timestamp_ms": run_records[-1]["timestamp_ms"],
        "telemetry_versions": sorted({r["telemetry_version"] for r in run_records}),
        "global_step": [r["global_step"] for r in run_records],
        "metrics": _series(run_records, baseline),
        "alerts": _alert_spans(transitions),
        "alerts_written": None if written_alerts is None else _compare_written(transitions, written_alerts),
        "drift": _drift(run_records, baseline),
        "validity": _validity(tallies[chosen].merged(unattributed), unattributed),
    }


def _pick_run(runs: list[str], run_id: str | None, source: str, tally: _Tally | None = None) -> str:
    """The run to report (`run_id`, else the only one); `tally`: `run_id`'s verdicts, to say why none is valid."""
    where = source or "the input"
    if run_id is not None:
        if run_id not in runs:
            held = ", ".join(runs) or "no valid record"
            why = ""
            if tally is not None and tally.examples:
                first = tally.examples[0]
                why = f" ({tally.counts['invalid']} invalid; the first, {first['where']}: {first['message']})"
            raise ReportError(f"run {run_id!r} has no valid record in {where}{why}; it holds {held}")
        return run_id
    if not runs:
        raise ReportError(f"no valid record in {where} (`ppo-telemetry validate` says why)")
    if len(runs) > 1:
        raise ReportError(f"{where} holds {len(runs)} runs, pick one with --run-id: {', '.join(runs)}")
    return runs[0]


@dataclass(frozen=True, slots=True)
class _BaselineView:
    """The baseline as drift models it, with its records (for the bands of the fields drift leaves out)."""

    model: Baseline
    records: tuple[Mapping[str, Any], ...]


def _baseline(baseline_records: Iterable[Mapping[str, Any]], baseline_runs: Sequence[str]) -> _BaselineView | None:
    records = [r if isinstance(r, Mapping) else r.to_dict() for r in baseline_records]
    if not records and not baseline_runs:
        return None
    model = Baseline.from_records(records, list(baseline_runs) or None)  # BaselineError: one line
    return _BaselineView(model, tuple(r for r in records if r["run_id"] in model.run_ids))


def _series(run_records: list[dict[str, Any]], baseline: _BaselineView | None) -> list[dict[str, Any]]:
    """Per metric: the run's values, one per record as `global_step` lists their steps (nulls kept, they
    break the line), a few statistics, and the baseline band."""
    specs = {spec.name: spec for spec in (baseline.model.specs if baseline else FIELD_SPECS)}
    out = []
    for name in METRICS:
        values = [r.get(name) for r in run_records]
        present = [v for v in values if v is not None]
        if not present:
            continue
        band, band_kind = _band(name, baseline, specs.get(name))
        spec = specs.get(name)
        log_axis = spec is not None and spec.log and all(v > 0 for v in present)
        out.append({
            "name": name, "meaning": FIELDS[name].meaning, "values": values,
            "count": len(present), "first": present[0], "last": present[-1], "min": min(present), "max": max(present),
            "band": band, "band_kind": band_kind, "log_axis": log_axis,
        })
    return out


def _band(name: str, baseline: _BaselineView | None, spec: FieldSpec | None) -> tuple[list[dict[str, Any]], str | None]:
    """The baseline band of one metric, one entry per drift window that holds baseline values:
    for a field drift compares, its tolerance (level ± threshold × noise, back on the field's scale),
    else the baseline runs' min–max in the window."""
    if baseline is None:
        return [], None
    model = baseline.model
    width = model.window_steps
    if name in DRIFT_FIELDS:
        i = DRIFT_FIELDS.index(name)
        reach = model.settings.threshold
        band = []
        for window, (level, noise) in enumerate(zip(model.level[i], model.noise[i], strict=True)):
            if level is None:
                continue
            band.append({"start": window * width, "end": (window + 1) * width, "low": _raw(spec, level - reach * noise),
                         "high": _raw(spec, level + reach * noise), "mid": _raw(spec, level)})
        return band, "tolerance"
    by_window: dict[int, list[float]] = {}
    for record in baseline.records:
        value = record.get(name)
        if value is not None:
            by_window.setdefault(record["global_step"] // width, []).append(float(value))
    band = [{"start": w * width, "end": (w + 1) * width, "low": min(v), "high": max(v), "mid": math.fsum(v) / len(v)}
            for w, v in sorted(by_window.items())]
    return band, "range"


def _raw(spec: FieldSpec, compared: float) -> float:
    """A number on drift's compared scale back on the field's own (a log-scale field: exp minus offset)."""
    if not spec.log:
        return compared
    return math.exp(min(compared, 700.0)) - spec.offset


def _transitions(run_records: list[dict[str, Any]], rules: RulesConfig | None) -> list[Transition]:
    """The watch core over the run's records, as `watch` runs it: every transition in order."""
    watch = Watch(rules)
    return [transition for record in run_records for transition in watch.observe(EpochSummary.from_dict(record))]


def _alert_spans(transitions: list[Transition]) -> list[dict[str, Any]]:
    """One span per firing, to its resolve (or open at the run's end)."""
    open_spans: dict[str, dict[str, Any]] = {}
    spans = []
    for transition in transitions:
        if transition.state == "firing":
            open_spans[transition.rule] = span = _span_start(transition)
            spans.append(span)
        elif transition.rule in open_spans:
            span = open_spans.pop(transition.rule)
            span.update(end_step=transition.global_step, end_epoch=transition.epoch,
                        resolved_summary=transition.summary)
    return spans


def _compare_written(transitions: list[Transition], written: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The watch group's transitions of the run against the core's over the same records: by rule, state
    and epoch, in order (the group may run other rules, or not have reached the run's end yet)."""
    def key(alert: Mapping[str, Any]) -> list[Any]:
        return [alert["rule"], alert["state"], alert["epoch"]]

    computed = [key(t.to_json_dict()) for t in transitions]
    seen = [key(alert) for alert in written]
    return {"count": len(seen), "agree": seen == computed, "transitions": seen}


def _span_start(transition: Transition) -> dict[str, Any]:
    return {
        "rule": transition.rule, "severity": transition.severity, "start_step": transition.global_step,
        "start_epoch": transition.epoch, "since_epoch": transition.since_epoch, "value": transition.value,
        "reference": transition.reference, "summary": transition.summary, "end_step": None, "end_epoch": None,
        "resolved_summary": None,
    }


def _drift(run_records: list[dict[str, Any]], baseline: _BaselineView | None) -> dict[str, Any] | None:
    """The drift core's summary of the run against the baseline (`drift --json`'s object), with the
    window size; None without a baseline."""
    if baseline is None:
        return None
    model = baseline.model
    doc: dict[str, Any] = {"baseline_run_ids": list(model.run_ids), "window_steps": model.window_steps,
                           "threshold": model.settings.threshold, "consecutive": model.settings.consecutive}
    tracker = DriftTracker(model)
    for record in run_records:
        tracker.observe(record)
    if not tracker.runs:  # the run is one of the baseline's own
        doc["note"] = "the run is one of the baseline runs, so it is not compared with them"
        return doc
    doc.update(tracker.summaries()[0].to_json_dict())
    return doc


# ------------------------------------------------------------------------------------------ Kafka


def kafka_inputs(config: dict[str, Any], topic: str, schemas: Any, run_id: str) -> list[tuple[str, Verdict]]:
    """The messages of run `run_id` (its key) on the epochs topic, from the beginning to the current end,
    each with its validator verdict, decoded by `schemas` (a `consumers.schema_resolver.SchemaResolver`:
    either wire format); a message that does not decode is an invalid item (rule `decode`).
    `ReportError` when the topic does not exist or holds no message of the run (naming a few that it holds)."""
    from confluent_kafka import TopicPartition

    from kafka_io import partition_count, read_to_end

    count = partition_count(config, topic)
    if not count:
        raise ReportError(f"topic {topic} does not exist, so run {run_id} is not on it")
    key = run_id.encode("utf-8")
    messages, others = [], Counter()
    for message in read_to_end(config, [TopicPartition(topic, p) for p in range(count)]):
        if message.key() == key:
            messages.append(message)
        else:
            others[message.key()] += 1
    if not messages:
        held = [k.decode("utf-8", "replace") for k in others if k is not None]
        shown = ", ".join(held[:10]) + (f" and {len(held) - 10} more" if len(held) > 10 else "")
        raise ReportError(f"run {run_id} is not on {topic}; it holds {shown or 'no run'}")
    return list(_checked(schemas, run_id, messages))


def _checked(schemas: Any, run_id: str, messages: list[Any]) -> Iterator[tuple[str, Verdict]]:
    """Each message decoded and validated in order (duplicates marked)."""
    from avro_schemas.errors import DecodeError
    from consumers.validator import Validator

    schemas.prepare(message.value() for message in messages)
    validator = Validator()
    for message in messages:
        where = f"partition {message.partition()} offset {message.offset()}"
        try:
            record = schemas.decode(message.value() or b"")
        except DecodeError as exc:
            yield where, Verdict("invalid", run_id=run_id, errors=[FieldError(None, "decode", str(exc))])
            continue
        yield where, validator.validate(record)


def drift_baseline_runs(config: dict[str, Any], drift_topic: str, run_id: str) -> list[str]:
    """The baseline runs the drift group compared run `run_id` with: those of the run's last DriftRecord
    on the drift topic (none when the topic or the run's records are not there)."""
    from confluent_kafka import TopicPartition

    from avro_schemas.codec import drift_record_codec
    from avro_schemas.errors import DecodeError
    from kafka_io import partition_count, read_to_end

    count = partition_count(config, drift_topic) or 0
    codec = drift_record_codec()
    key = run_id.encode("utf-8")
    runs: list[str] = []
    for message in read_to_end(config, [TopicPartition(drift_topic, p) for p in range(count)]):
        if message.key() != key or message.value() is None:
            continue
        try:
            record = codec.decode(message.value())
        except DecodeError:
            continue
        runs = list(record.get("baseline_run_ids") or record["baseline_run_id"].split(","))
    return runs


def watch_group_alerts(config: dict[str, Any], alerts_topic: str, run_id: str) -> list[dict[str, Any]] | None:
    """The run's transitions as the watch group wrote them to the alerts topic, in order (None when the
    topic does not exist: no watch group ran in this namespace)."""
    from confluent_kafka import TopicPartition

    from avro_schemas.codec import alert_codec
    from avro_schemas.errors import DecodeError
    from kafka_io import partition_count, read_to_end

    count = partition_count(config, alerts_topic)
    if not count:
        return None
    codec = alert_codec()
    key = run_id.encode("utf-8")
    alerts = []
    for message in read_to_end(config, [TopicPartition(alerts_topic, p) for p in range(count)]):
        if message.key() == key and message.value() is not None:
            try:
                alerts.append(codec.decode(message.value()))
            except DecodeError:
                continue
    return alerts


# ------------------------------------------------------------------------------------------ HTML

_WIDTH, _HEIGHT = 560, 230
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 12, 12, 34
_SEVERITY_COLOUR = {"warning": "#e8a317", "critical": "#d62728"}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px;color:#1d2430;
background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde2ea;padding-bottom:4px}
.sub{color:#5a6472;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #dde2ea;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
.differs{color:#b3261e;font-weight:600}.same{color:#2e7d32}.skipped{color:#7a8290}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:14px}
figure{margin:0;border:1px solid #dde2ea;border-radius:6px;padding:8px}
figcaption{font-size:13px;font-weight:600;margin-bottom:2px}figcaption span{font-weight:400;color:#5a6472}
svg text{font-size:11px;fill:#3b4452}.legend{font-size:12px;color:#3b4452;margin:6px 0}
.swatch{display:inline-block;width:14px;height:10px;margin:0 4px 0 12px;vertical-align:middle}
.ok{color:#2e7d32}.bad{color:#b3261e}
"""


def render_html(report: Mapping[str, Any]) -> str:
    """The page of a `gather_report` dict: one self-contained HTML document (no script runs, nothing is
    fetched); the dict is embedded as JSON in `<script id="report-data" type="application/json">`."""
    title = f"PPO run report: {report['run_id']}"
    data = json.dumps(report, allow_nan=False, separators=(",", ":")).replace("<", "\\u003c")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f'<div class="sub">{_esc(_subtitle(report))}</div>',
        _validity_html(report["validity"]),
        _drift_html(report["drift"]),
        _alerts_html(report["alerts"], report.get("alerts_written")),
        _metrics_table_html(report),
        _plots_html(report),
        f'<script id="report-data" type="application/json">{data}</script>',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _num(value: float | None) -> str:
    """A number as the page shows it: 6 significant digits, integers whole."""
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.6g}"


def _cell(value: float | None) -> str:
    """A table cell carrying the exact value in `data-value` (what the browser test compares)."""
    exact = "" if value is None else f' data-value="{_esc(repr(value))}"'
    return f'<td class="num"{exact}>{_num(value)}</td>'


def _subtitle(report: Mapping[str, Any]) -> str:
    from datetime import datetime, timezone

    def when(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

    return (f"{report['records']:,} records, global_step {report['first_step']:,} to {report['last_step']:,}, "
            f"{when(report['first_timestamp_ms'])} to {when(report['last_timestamp_ms'])}; telemetry "
            f"{', '.join(report['telemetry_versions'])}; from {report['source']}")


def _validity_html(validity: Mapping[str, Any]) -> str:
    total = validity["valid"] + validity["invalid"] + validity["duplicate"]
    verdict = ('<span class="ok">all valid</span>' if not validity["invalid"]
               else f'<span class="bad">{validity["invalid"]:,} invalid</span>')
    rows = [
        '<h2 id="validity">Validity</h2>',
        f"<p>{total:,} records read: {verdict}.</p>",
        '<table id="validity-table"><tr><th>outcome</th><th>records</th></tr>',
    ]
    for outcome in ("valid", "invalid", "duplicate", "warnings", "of_no_run"):
        label = {"warnings": "warnings (gaps, unknown keys)",
                 "of_no_run": "invalid, of no run (not JSON, no run_id, or one with no valid record)"}
        shown = _esc(label.get(outcome, outcome))
        rows.append(f'<tr data-outcome="{outcome}"><td>{shown}</td>{_cell(validity[outcome])}</tr>')
    rows.append("</table>")
    if validity["invalid_by_rule"]:
        rows.append('<table id="invalid-rules"><tr><th>rule</th><th>invalid records</th></tr>')
        rows += [f'<tr data-rule="{_esc(rule)}"><td>{_esc(rule)}</td>{_cell(count)}</tr>'
                 for rule, count in validity["invalid_by_rule"].items()]
        rows.append("</table>")
    if validity["examples"]:
        shown = len(validity["examples"])
        rows.append(f"<p>The first {shown} invalid records:</p>"
                    "<table><tr><th>where</th><th>rule</th><th>message</th></tr>")
        rows += [f"<tr><td>{_esc(e['where'])}</td><td>{_esc(e['rule'])}</td><td>{_esc(e['message'])}</td></tr>"
                 for e in validity["examples"]]
        rows.append("</table>")
    return "\n".join(rows)


def _drift_html(drift: Mapping[str, Any] | None) -> str:
    head = '<h2 id="drift">Drift against the baseline</h2>'
    if drift is None:
        return head + "<p>No baseline given (<code>--baseline</code>): no band and no drift verdicts.</p>"
    runs = ", ".join(drift["baseline_run_ids"])
    if "note" in drift:
        return head + f"<p>Baseline runs {_esc(runs)}: {_esc(drift['note'])}.</p>"
    rows = [
        head,
        f"<p>Against {len(drift['baseline_run_ids'])} baseline run(s) ({_esc(runs)}), in windows of "
        f"{drift['window_steps']:,} steps; {drift['windows_compared']} windows compared. A field differs when its "
        f"window mean stays more than {drift['threshold']:g} noise scales from the baseline for "
        f"{drift['consecutive']} windows in a row.</p>",
        '<table id="drift-table"><tr><th>field</th><th>verdict</th><th>from step</th><th>direction</th>'
        "<th>largest effect</th><th>change vs baseline</th></tr>",
    ]
    for name, verdict in drift["fields"].items():
        kind = verdict["verdict"]
        shown = kind if kind != "skipped" else f"skipped: {drift['skipped_fields'].get(name, '')}"
        change = verdict["relative_change"]
        rows.append(
            f'<tr data-field="{_esc(name)}" data-verdict="{_esc(kind)}"><td>{_esc(name)}</td>'
            f'<td class="{_esc(kind)}">{_esc(shown)}</td>{_cell(verdict["first_step"])}'
            f"<td>{_esc(verdict['direction'] or '')}</td>{_cell(verdict['effect'])}"
            f'<td class="num">{"" if change is None else f"{change:+.1%}"}</td></tr>'
        )
    rows.append("</table>")
    return "\n".join(rows)


def _alerts_html(alerts: Sequence[Mapping[str, Any]], written: Mapping[str, Any] | None) -> str:
    head = '<h2 id="alerts">Alerts</h2>' + _written_html(written)
    if not alerts:
        return head + '<p class="ok">No alert fired.</p>'
    rows = [head, '<table id="alerts-table"><tr><th>rule</th><th>severity</th><th>fired at step</th>'
                  "<th>resolved at step</th><th>what it said</th></tr>"]
    for span in alerts:
        end = "<td>still firing</td>" if span["end_step"] is None else _cell(span["end_step"])
        rows.append(
            f'<tr data-rule="{_esc(span["rule"])}"><td>{_esc(span["rule"])}</td><td>{_esc(span["severity"])}</td>'
            f'{_cell(span["start_step"])}{end}'
            f"<td>{_esc(span['summary'])}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def _written_html(written: Mapping[str, Any] | None) -> str:
    """One line: do the watch group's transitions on the alerts topic agree with the spans shown?"""
    if written is None:
        return ""
    if not written["count"] and not written["agree"]:
        return ('<p id="alerts-written" data-agree="false">The alerts topic holds no transition of this run: no '
                "watch group has read it yet, or it runs rules that did not fire.</p>")
    if written["agree"]:
        return (f'<p id="alerts-written" data-agree="true" class="ok">The watch group wrote the same '
                f'{written["count"]} transitions to the alerts topic.</p>')
    return (f'<p id="alerts-written" data-agree="false" class="bad">The watch group wrote {written["count"]} '
            "transitions to the alerts topic, not the ones below: it runs other rules, or has not read the run "
            "to its end yet.</p>")


def _metrics_table_html(report: Mapping[str, Any]) -> str:
    verdicts = (report["drift"] or {}).get("fields", {})
    rows = ['<h2 id="summary">Metrics</h2>',
            '<table id="metrics-table"><tr><th>metric</th><th>records</th><th>first</th><th>last</th><th>min</th>'
            "<th>max</th><th>drift</th></tr>"]
    for metric in report["metrics"]:
        name = _esc(metric["name"])
        verdict = verdicts.get(metric["name"], {}).get("verdict", "")
        rows.append(
            f'<tr data-metric="{name}"><td><a href="#plot-{name}">{name}</a></td>'
            f'{_cell(metric["count"])}{_cell(metric["first"])}{_cell(metric["last"])}{_cell(metric["min"])}'
            f'{_cell(metric["max"])}<td class="{_esc(verdict)}">{_esc(verdict)}</td></tr>'
        )
    rows.append("</table>")
    return "\n".join(rows)


def _plots_html(report: Mapping[str, Any]) -> str:
    legend = ('<div class="legend"><span class="swatch" style="background:#1f5fbf"></span>this run'
              '<span class="swatch" style="background:#9ec3ee"></span>baseline band'
              '<span class="swatch" style="background:#e8a31740;border:1px solid #e8a317"></span>alert firing (warning)'
              '<span class="swatch" style="background:#d6272840;border:1px solid #d62728"></span>'
              'alert firing (critical)'
              '<span class="swatch" style="background:#b3261e;height:2px"></span>drift from step</div>')
    verdicts = (report["drift"] or {}).get("fields", {})
    figures = [_plot(metric, report, verdicts.get(metric["name"])) for metric in report["metrics"]]
    heading = '<h2 id="plots">Every metric against global_step</h2>'
    return heading + legend + '<div class="plots">' + "".join(figures) + "</div>"


@dataclass(frozen=True, slots=True)
class _Axes:
    """Data to pixel coordinates of one plot."""

    x0: float
    x1: float
    y0: float
    y1: float
    log: bool

    def x(self, step: float) -> float:
        return _LEFT + (step - self.x0) / (self.x1 - self.x0) * (_WIDTH - _LEFT - _RIGHT)

    def y(self, value: float) -> float:
        scaled = self.scale(value)
        top, bottom = _TOP, _HEIGHT - _BOTTOM
        return bottom - (scaled - self.y0) / (self.y1 - self.y0) * (bottom - top)

    def scale(self, value: float) -> float:
        if self.log:
            return math.log10(value) if value > 0 else self.y0 - 1
        return value


def _axes(metric: Mapping[str, Any], report: Mapping[str, Any]) -> _Axes:
    values = [v for v in metric["values"] if v is not None] + [b["mid"] for b in metric["band"]]
    log = metric["log_axis"] and all(v > 0 for v in values)
    scaled = [math.log10(v) for v in values] if log else [float(v) for v in values]
    low, high = min(scaled), max(scaled)
    pad = (high - low) * 0.05 or (abs(high) * 0.05 or 1.0)
    last = max(report["last_step"], max((b["end"] for b in metric["band"]), default=0))
    first = min(report["first_step"], 0)
    return _Axes(first, last if last > first else first + 1, low - pad, high + pad, log)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round numbers between low and high (about `count` of them)."""
    span = high - low
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _plot(metric: Mapping[str, Any], report: Mapping[str, Any], verdict: Mapping[str, Any] | None) -> str:
    name = metric["name"]
    axes = _axes(metric, report)
    bottom, right = _HEIGHT - _BOTTOM, _WIDTH - _RIGHT
    clip = f"clip-{name}"
    frame = f'x="{_LEFT}" y="{_TOP}" width="{right - _LEFT}" height="{bottom - _TOP}"'
    body = [f'<clipPath id="{clip}"><rect {frame}/></clipPath>']
    body += _grid(axes)
    body.append(f'<g clip-path="url(#{clip})">')
    body += _band_shapes(metric, axes)
    body += _alert_shapes(report["alerts"], axes, report["last_step"])
    if verdict and verdict.get("verdict") == "differs":
        x = axes.x(verdict["first_step"])
        body.append(f'<line class="drift-start" x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{bottom}" stroke="#b3261e" '
                    f'stroke-width="1.5" stroke-dasharray="5 3"><title>differs from the baseline from step '
                    f'{verdict["first_step"]:,} ({verdict["direction"]})</title></line>')
    path = _series_path(report["global_step"], metric["values"], axes)
    body.append(f'<path class="series" d="{path}" fill="none" stroke="#1f5fbf" '
                'stroke-width="1.5" '
                'stroke-linecap="round"/>')
    body.append("</g>")
    body.append(f'<rect {frame} fill="none" stroke="#8a93a0"/>')
    body.append(f'<text x="{(_LEFT + right) / 2:.0f}" y="{_HEIGHT - 4}" text-anchor="middle">global_step</text>')
    scale = " (log scale)" if axes.log else ""
    band = {"tolerance": "; band: drift's tolerance, baseline level ± threshold × noise",
            "range": "; band: baseline runs' min–max per window", None: ""}[metric["band_kind"]]
    return (f'<figure id="plot-{_esc(name)}" data-metric="{_esc(name)}" data-points="{metric["count"]}">'
            f'<figcaption>{_esc(name)}{scale} <span>{_esc(metric["meaning"])}{_esc(band)}</span></figcaption>'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" '
            f'viewBox="0 0 {_WIDTH} {_HEIGHT}" '
            f'role="img" aria-label="{_esc(name)} against global_step">{"".join(body)}</svg></figure>')


def _grid(axes: _Axes) -> list[str]:
    bottom, right = _HEIGHT - _BOTTOM, _WIDTH - _RIGHT
    out = []
    for tick in _ticks(axes.x0, axes.x1):
        x = axes.x(tick)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{bottom}" stroke="#eef0f4"/>'
                   f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">{_step_label(tick)}</text>')
    for tick in _ticks(axes.y0, axes.y1):
        y = _HEIGHT - _BOTTOM - (tick - axes.y0) / (axes.y1 - axes.y0) * (bottom - _TOP)
        label = f"{10 ** tick:.3g}" if axes.log else f"{tick:.4g}"
        out.append(f'<line x1="{_LEFT}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eef0f4"/>'
                   f'<text x="{_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    return out


def _step_label(step: float) -> str:
    return f"{step / 1000:g}k" if abs(step) >= 1000 else f"{step:g}"


def _band_shapes(metric: Mapping[str, Any], axes: _Axes) -> list[str]:
    out = []
    for window in metric["band"]:
        x0, x1 = axes.x(window["start"]), axes.x(window["end"])
        top, low, mid = axes.y(window["high"]), axes.y(window["low"]), axes.y(window["mid"])
        tip = f"baseline steps {window['start']:,}–{window['end']:,}: {_num(window['low'])} to {_num(window['high'])}"
        out.append(f'<rect class="band" x="{x0:.1f}" y="{top:.1f}" width="{x1 - x0:.1f}" '
                   f'height="{max(low - top, 0.5):.1f}" '
                   f'fill="#9ec3ee" fill-opacity="0.55"><title>{_esc(tip)}</title></rect>'
                   f'<line class="band-level" x1="{x0:.1f}" x2="{x1:.1f}" y1="{mid:.1f}" y2="{mid:.1f}" '
                   'stroke="#5b8fd0" stroke-dasharray="3 2"/>')
    return out


def _alert_shapes(alerts: Sequence[Mapping[str, Any]], axes: _Axes, last_step: int) -> list[str]:
    out = []
    for span in alerts:
        x0 = axes.x(span["start_step"])
        x1 = axes.x(span["end_step"] if span["end_step"] is not None else last_step)
        colour = _SEVERITY_COLOUR.get(span["severity"], "#d62728")
        out.append(f'<rect class="alert-span" x="{x0:.1f}" y="{_TOP}" width="{max(x1 - x0, 2):.1f}" '
                   f'height="{_HEIGHT - _BOTTOM - _TOP}" fill="{colour}" fill-opacity="0.18" stroke="{colour}" '
                   f'stroke-opacity="0.6"><title>{_esc(span["rule"])}: {_esc(span["summary"])}</title></rect>')
    return out


def _series_path(steps: Sequence[int], values: Sequence[float | None], axes: _Axes) -> str:
    """The run's values as one SVG path; a null value breaks the line. Of consecutive points in one pixel
    column only the first, lowest, highest and last are drawn: the same picture from a few per column."""
    commands = []
    for line in _lines(steps, values, axes):
        # a line's first point alone is a dot (round cap), so a lone value between nulls still shows
        commands.append(f"M{line[0][0]:.1f} {line[0][1]:.1f}h0")
        commands += [f"L{x:.1f} {y:.1f}" for x, y in line[1:]]
    return "".join(commands)


def _lines(steps: Sequence[int], values: Sequence[float | None], axes: _Axes) -> Iterator[list[tuple[float, float]]]:
    """The pixel points of each unbroken stretch of values, thinned per pixel column."""
    line: list[tuple[float, float]] = []
    column: list[tuple[float, float]] = []
    for step, value in zip(steps, values, strict=True):
        if value is None:
            line += _thinned(column)
            column = []
            if line:
                yield line
            line = []
            continue
        point = (axes.x(step), axes.y(value))
        if column and int(point[0]) != int(column[0][0]):
            line += _thinned(column)
            column = []
        column.append(point)
    line += _thinned(column)
    if line:
        yield line


def _thinned(column: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """First, lowest, highest and last of a pixel column's points, in their order."""
    if len(column) <= 4:
        return column
    keep = sorted({0, len(column) - 1, min(range(len(column)), key=lambda i: column[i][1]),
                   max(range(len(column)), key=lambda i: column[i][1])})
    return [column[i] for i in keep]
