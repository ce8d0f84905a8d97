"""The output schemas of SPEC §4 (`ppo.telemetry.DriftRecord`, `ppo.telemetry.Alert`) and their codecs."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import fastavro
import pytest

from avro_schemas.codec import HEADER_SIZE, MAGIC, SingleObjectCodec, alert_codec, drift_record_codec, epoch_summary_codec
from avro_schemas.compatibility import check_all
from avro_schemas.errors import DecodeError, EncodeError
from avro_schemas.flat_reader import compile_flat_reader
from avro_schemas.registry import SCHEMA_DIR, crc64_avro, list_families, load_family
from consumers.drift import DRIFT_FIELDS, Baseline, DriftSettings, DriftTracker, FieldVerdict, RunDriftSummary
from consumers.telemetry_watch import Transition
from ppo_telemetry.cli import main
from ppo_telemetry.demo import synthetic_run


def drift_records() -> tuple[dict[str, Any], dict[str, Any]]:
    """A real verdict-change DriftRecord (fields that differ among them) and the run's summary."""
    base = [r for seed in (1, 2) for r in synthetic_run(f"run-a{seed}", 80, seed, unstable=False)]
    tracker = DriftTracker(Baseline.from_records(base, settings=DriftSettings(windows=10)))
    changes = [c for r in synthetic_run("run-b", 80, 3, unstable=True) if (c := tracker.observe(r)) is not None]
    return changes[-1].to_record_dict(), tracker.summary("run-b").to_record_dict("summary")


DRIFT, DRIFT_SUMMARY = drift_records()
DRIFT_V1_0 = RunDriftSummary(
    "run-b", ("run-a",), 0, dict.fromkeys(DRIFT_FIELDS, FieldVerdict("skipped")),
    dict.fromkeys(DRIFT_FIELDS, "missing_in_baseline"),
).to_record_dict("summary")
FIRING = Transition(
    "run-b", "kl_spike", "firing", "warning", 12, 3072, 99, 0.081, 0.05, 10, "max KL per update 0.081 is above 0.05"
).to_avro_dict()
RESOLVED = Transition(
    "run-b", "entropy_collapse", "resolved", "critical", 40, 10240, None, 0.3, 0.069, 31, "policy entropy back"
).to_avro_dict()
# What a v1.0 writer sent, and what a v1.1 reader makes of it (the new fields' defaults).
ALERT_V1_0 = {"run_id": "run-a", "rule": "grad_explosion", "state": "firing", "epoch": 7, "log_stream_offset": 3,
              "value": 12.5, "threshold": 10.0}

CODECS = {"drift_record": drift_record_codec, "alert": alert_codec}
RECORDS = [
    ("drift_record", DRIFT), ("drift_record", DRIFT_SUMMARY), ("drift_record", DRIFT_V1_0),
    ("alert", FIRING), ("alert", RESOLVED),
]
RECORD_IDS = ["drift-change", "drift-summary", "drift-no-record-compared", "alert-firing", "alert-resolved"]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def schema_dir_with(tmp_path: Path, family: str, new_minor: int, schema: dict[str, Any]) -> Path:
    """A schema directory holding the shipped v1.0 of `family` and `schema` as its v1.<new_minor>."""
    shutil.copy(SCHEMA_DIR / f"{family}_v1.0.avsc", tmp_path / f"{family}_v1.0.avsc")
    (tmp_path / f"{family}_v1.{new_minor}.avsc").write_text(json.dumps(schema), encoding="utf-8")
    return tmp_path


def shipped(family: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / f"{family}_v1.0.avsc").read_text(encoding="utf-8"))


# --- the schemas ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "full_name", "source_keys"),
    [
        ("drift_record", "ppo.telemetry.DriftRecord", list(DRIFT)),
        ("alert", "ppo.telemetry.Alert", list(FIRING)),
    ],
)
def test_output_schema_fields_mirror_the_consumer_json_dict_in_order(family, full_name, source_keys):
    version = load_family(family)[-1]  # the consumers write the newest version
    assert version.full_name == full_name
    assert list(version.field_names) == source_keys


@pytest.mark.parametrize("family", ["drift_record", "alert"])
def test_every_output_schema_field_has_a_doc(family):
    schema = shipped(family)
    assert schema["doc"]
    assert all(field.get("doc") for field in schema["fields"])


@pytest.mark.parametrize("family", ["drift_record", "alert"])
def test_output_schemas_use_the_epoch_summary_types_for_shared_fields(family):
    epoch_summary = {f["name"]: f for f in load_family("epoch_summary")[-1].schema["fields"]}
    for field in shipped(family)["fields"]:
        if field["name"] in ("run_id", "epoch", "log_stream_offset"):
            assert field["type"] == epoch_summary[field["name"]]["type"]
            assert ("default" in field) == ("default" in epoch_summary[field["name"]])


def test_alert_state_enum_symbols_are_the_transition_states():
    state = next(f["type"] for f in shipped("alert")["fields"] if f["name"] == "state")
    assert state["type"] == "enum" and state["name"] == "AlertState"
    assert state["symbols"] == ["firing", "resolved"]
    assert load_family("alert")[0].parsed["fields"][2]["type"]["name"] == "ppo.telemetry.AlertState"


# --- the codecs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "record"), RECORDS, ids=RECORD_IDS)
def test_output_record_round_trips_to_the_same_dict(family, record):
    codec = CODECS[family]()
    decoded = codec.decode(codec.encode(record))
    assert decoded == record
    assert list(decoded) == list(record)


def test_drift_maps_keep_their_key_order():
    decoded = drift_record_codec().decode(drift_record_codec().encode(DRIFT))
    assert list(decoded["drifts"]) == list(DRIFT["drifts"])
    assert list(decoded["skipped_fields"]) == list(DRIFT["skipped_fields"])


@pytest.mark.parametrize(("family", "record"), RECORDS, ids=RECORD_IDS)
def test_output_message_header_is_c3_01_then_little_endian_fingerprint(family, record):
    codec = CODECS[family]()
    version = load_family(family)[-1]
    data = codec.encode(record)
    assert data[:2] == MAGIC == b"\xc3\x01"
    expected = crc64_avro(version.canonical_form.encode("utf-8")).to_bytes(8, "little")
    assert data[2:HEADER_SIZE] == expected == version.fingerprint
    assert codec.writer_of(data).full_name == version.full_name
    # The body is plain Avro binary of the writer schema.
    assert fastavro.schemaless_reader(io.BytesIO(data[HEADER_SIZE:]), version.parsed, None) == record


def test_output_families_have_distinct_fingerprints():
    fingerprints = {load_family(family)[-1].fingerprint for family in list_families()}
    assert len(fingerprints) == len(list_families()) >= 3


def test_drift_record_is_read_by_fastavro_and_alert_by_the_compiled_reader():
    # Maps are not flat: the drift codec must fall back to fastavro, not fail to compile.
    assert compile_flat_reader(load_family("drift_record")[0].schema) is None
    flat = compile_flat_reader(load_family("alert")[-1].schema)
    assert flat is not None
    data = alert_codec().encode(FIRING)
    assert flat(data, HEADER_SIZE) == (FIRING, len(data))


def test_alert_v1_1_keeps_v1_0_s_required_threshold_equal_to_reference():
    fields = [f["name"] for f in load_family("alert")[-1].schema["fields"]]
    assert fields[-1] == "threshold" and FIRING["threshold"] == FIRING["reference"]


def test_a_v1_0_alert_reads_into_v1_1_with_the_new_fields_defaults():
    old, new = load_family("alert")
    data = alert_codec().encode(ALERT_V1_0, writer=old)
    assert alert_codec().decode(data) == ALERT_V1_0
    resolved = alert_codec().decode(data, reader=new)
    assert resolved == dict(ALERT_V1_0, severity="warning", global_step=None, reference=None, since_epoch=None, summary=None)


def test_a_v1_1_alert_reads_into_v1_0_with_its_threshold():
    old, _ = load_family("alert")
    resolved = alert_codec().decode(alert_codec().encode(FIRING), reader=old)
    assert resolved == {k: FIRING[k] for k in ("run_id", "rule", "state", "epoch", "log_stream_offset", "value", "threshold")}


def test_alert_severity_enum_symbols_are_the_rule_severities():
    from consumers.telemetry_watch import SEVERITIES

    severity = next(f["type"] for f in load_family("alert")[-1].schema["fields"] if f["name"] == "severity")
    assert severity["name"] == "AlertSeverity" and tuple(severity["symbols"]) == SEVERITIES


def test_alert_threshold_given_as_an_integer_reads_back_as_a_double():
    record = dict(FIRING, value=12, reference=10, threshold=10)
    decoded = alert_codec().decode(alert_codec().encode(record))
    assert decoded["threshold"] == 10.0 and isinstance(decoded["threshold"], float)
    assert decoded["reference"] == 10.0 and isinstance(decoded["reference"], float)


@pytest.mark.parametrize(
    ("family", "record"),
    [
        ("alert", dict(FIRING, state="pending")),
        ("alert", dict(FIRING, epoch=2**31)),
        ("alert", {k: v for k, v in FIRING.items() if k != "rule"}),
        ("drift_record", dict(DRIFT, drifts={"policy_loss": "high"})),
        ("drift_record", dict(DRIFT, skipped_fields={"policy_loss": None})),
        ("drift_record", dict(DRIFT, epoch=-(2**31) - 1)),
    ],
    ids=["unknown-state", "alert-epoch-beyond-int", "missing-rule", "drift-not-double", "skip-not-string", "drift-epoch-beyond-int"],
)
def test_output_record_that_does_not_fit_its_schema_is_an_encode_error(family, record):
    with pytest.raises(EncodeError):
        CODECS[family]().encode(record)


@pytest.mark.parametrize(("family", "record"), RECORDS, ids=RECORD_IDS)
def test_every_proper_prefix_of_an_output_message_is_a_decode_error(family, record):
    codec = CODECS[family]()
    data = codec.encode(record)
    for end in range(len(data)):
        with pytest.raises(DecodeError):
            codec.decode(data[:end])


@pytest.mark.parametrize(("family", "record"), RECORDS, ids=RECORD_IDS)
def test_output_message_with_a_wrong_fingerprint_is_a_decode_error(family, record):
    data = bytearray(CODECS[family]().encode(record))
    data[HEADER_SIZE - 1] ^= 0xFF
    with pytest.raises(DecodeError, match="unknown writer schema fingerprint"):
        CODECS[family]().decode(bytes(data))


@pytest.mark.parametrize("family", ["drift_record", "alert"])
def test_output_codec_refuses_an_epoch_summary_message_and_vice_versa(family):
    record = {"drift_record": DRIFT, "alert": FIRING}[family]
    epoch_message = epoch_summary_codec().encode(
        {
            "telemetry_version": "1.0", "run_id": "r", "epoch": 0, "global_step": 0, "timestamp_ms": 0,
            "policy_loss": 0.0, "value_loss": 0.0, "kl_divergence": 0.0, "clip_fraction": 0.0,
            "explained_variance": None, "learning_rate": 0.0, "mean_episode_return": None,
            "num_samples": 1, "num_minibatches": 1,
        }
    )
    with pytest.raises(DecodeError, match="unknown writer schema fingerprint"):
        CODECS[family]().decode(epoch_message)
    with pytest.raises(DecodeError, match="unknown writer schema fingerprint"):
        epoch_summary_codec().decode(CODECS[family]().encode(record))


@pytest.mark.parametrize("data", [b"", b"\xc3", b"\x00\x01" + bytes(8) + b"\x00", b"{}"], ids=["empty", "half-magic", "wrong-magic", "json"])
@pytest.mark.parametrize("family", ["drift_record", "alert"])
def test_output_message_with_a_bad_header_is_a_decode_error(family, data):
    with pytest.raises(DecodeError):
        CODECS[family]().decode(data)


@pytest.mark.parametrize("family", ["drift_record", "alert"])
def test_garbage_body_after_a_valid_header_is_only_ever_a_decode_error(family):
    codec = CODECS[family]()
    header = codec.encode({"drift_record": DRIFT, "alert": FIRING}[family])[:HEADER_SIZE]
    for seed in range(300):
        body = bytes((seed * 131 + i * 197 + (i * i) % 251) % 256 for i in range(seed % 47))
        try:
            record = codec.decode(header + body)
        except DecodeError:
            continue
        assert isinstance(record, dict)


def test_output_codec_is_a_single_object_codec_without_a_version_field():
    for factory in CODECS.values():
        codec = factory()
        assert isinstance(codec, SingleObjectCodec)
        assert codec.writer_for({}) is codec.latest


# --- the compatibility check ----------------------------------------------------------------------


def test_check_all_reports_the_output_families_compatible():
    results = check_all()
    assert results["drift_record"] == [] and results["alert"] == []


def test_schemas_check_cli_covers_every_shipped_family(capsys):
    code, out = run_cli(capsys, "schemas", "check")
    assert code == 0
    for family in ("alert", "drift_record", "epoch_summary"):
        assert f"{family}: versions " in out
    assert "drift_record: versions 1.0, 1.1 are FULL_TRANSITIVE compatible" in out
    assert "alert: versions 1.0, 1.1 are FULL_TRANSITIVE compatible" in out


def test_drift_record_evolution_adding_a_field_without_default_is_caught(tmp_path, capsys):
    schema = shipped("drift_record")
    schema["fields"].append({"name": "cycle_id", "type": "long", "doc": "new"})
    directory = schema_dir_with(tmp_path, "drift_record", 1, schema)
    messages = check_all(directory)["drift_record"]
    assert messages == [
        "drift_record v1.0 -> v1.1 (backward): reader field 'cycle_id' has no default and is missing "
        "from the writer (at DriftRecord.cycle_id)"
    ]
    code, out = run_cli(capsys, "schemas", "check", "--dir", str(directory))
    assert code == 1 and "'cycle_id' has no default" in out


def test_drift_record_evolution_changing_map_values_is_caught(tmp_path, capsys):
    schema = shipped("drift_record")
    schema["fields"][4]["type"] = {"type": "map", "values": "string"}
    directory = schema_dir_with(tmp_path, "drift_record", 1, schema)
    messages = check_all(directory)["drift_record"]
    assert messages and all("field 'drifts'" in m and "DriftRecord.drifts{}" in m for m in messages)
    assert run_cli(capsys, "schemas", "check", "--dir", str(directory))[0] == 1


def test_alert_evolution_removing_a_state_symbol_is_caught(tmp_path, capsys):
    schema = shipped("alert")
    schema["fields"][2]["type"]["symbols"] = ["firing"]
    directory = schema_dir_with(tmp_path, "alert", 1, schema)
    messages = check_all(directory)["alert"]
    assert any("(backward)" in m and "field 'state'" in m and "'resolved'" in m for m in messages), messages
    code, out = run_cli(capsys, "schemas", "check", "--dir", str(directory))
    assert code == 1 and "field 'state'" in out


def test_output_schema_evolution_adding_a_nullable_field_with_default_passes(tmp_path, capsys):
    for family in ("drift_record", "alert"):
        schema = shipped(family)
        schema["fields"].append({"name": "cycle_id", "type": ["null", "long"], "default": None, "doc": "new"})
        schema_dir_with(tmp_path, family, 1, schema)
    assert check_all(tmp_path) == {"alert": [], "drift_record": []}
    code, out = run_cli(capsys, "schemas", "check", "--dir", str(tmp_path))
    assert code == 0 and "drift_record: versions 1.0, 1.1 are FULL_TRANSITIVE compatible" in out
