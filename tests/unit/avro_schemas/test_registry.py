"""The schema files, their fingerprints and the run-time registry (SPEC §1, §3)."""

from __future__ import annotations

import json

import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint

from avro_schemas.errors import SchemaLoadError
from avro_schemas.registry import (
    SCHEMA_DIR,
    SchemaRegistry,
    crc64_avro,
    list_families,
    load_family,
    schema_from_json,
)

V1_1_ADDED = {
    "epoch_duration_sec": "double",
    "data_mode": "enum",
    "cycle_id": "long",
    "batch_entropy_mean": "double",
    "batch_entropy_std": "double",
    "grad_norm_max": "double",
    "kl_divergence_max": "double",
    "reward_advantage_corr": "double",
    "rollout_ticks": "long",
    "log_stream_offset": "long",
}


@pytest.fixture(scope="module")
def versions():
    return {v.version: v for v in load_family("epoch_summary")}


def test_crc64_avro_matches_spec_test_vector_for_null_schema():
    # The Avro specification's example: the fingerprint of the schema `"null"`.
    assert crc64_avro(b'"null"') == 7195948357588979594


def test_crc64_avro_of_empty_input_is_the_empty_constant():
    assert crc64_avro(b"") == 0xC15D213AA4D7A795


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_fingerprint_agrees_with_fastavro_crc64_avro(versions, version):
    schema = versions[version]
    # fastavro returns the little-endian bytes of the fingerprint as hex: the wire order.
    expected = fastavro_fingerprint(schema.canonical_form, "CRC-64-AVRO")
    assert schema.fingerprint.hex() == expected
    assert schema.fingerprint_hex == expected
    assert schema.fingerprint == crc64_avro(schema.canonical_form.encode()).to_bytes(8, "little")


def test_epoch_summary_versions_have_different_fingerprints(versions):
    assert versions["1.0"].fingerprint != versions["1.1"].fingerprint


def test_epoch_summary_versions_load_oldest_first():
    assert [v.version for v in load_family("epoch_summary")] == ["1.0", "1.1"]
    assert "epoch_summary" in list_families()


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_schema_files_parse_and_are_named_ppo_telemetry_epoch_summary(version):
    text = (SCHEMA_DIR / f"epoch_summary_v{version}.avsc").read_text(encoding="utf-8")
    schema = schema_from_json(text)
    assert schema.full_name == "ppo.telemetry.EpochSummary"
    raw = json.loads(text)
    assert raw["type"] == "record"
    assert f"{raw['namespace']}.{raw['name']}" == "ppo.telemetry.EpochSummary"


def test_v1_1_keeps_every_v1_0_field_unchanged(versions):
    old = versions["1.0"].schema["fields"]
    new = versions["1.1"].schema["fields"]
    assert new[: len(old)] == old


def test_v1_1_adds_exactly_the_ten_spec_fields_each_nullable_with_null_default(versions):
    old_names = set(versions["1.0"].field_names)
    added = [f for f in versions["1.1"].schema["fields"] if f["name"] not in old_names]
    assert [f["name"] for f in added] == list(V1_1_ADDED)
    for field in added:
        assert "default" in field and field["default"] is None, field["name"]
        assert isinstance(field["type"], list) and len(field["type"]) == 2, field["name"]
        null, branch = field["type"]
        assert null == "null", field["name"]
        kind = branch["type"] if isinstance(branch, dict) else branch
        assert kind == V1_1_ADDED[field["name"]], field["name"]


def test_data_mode_enum_has_spec_symbols_and_unknown_default(versions):
    (data_mode,) = [f for f in versions["1.1"].schema["fields"] if f["name"] == "data_mode"]
    enum = data_mode["type"][1]
    assert enum["type"] == "enum"
    assert enum["name"] == "DataMode"
    assert enum["symbols"] == ["replay", "rollout", "mixed", "unknown"]
    assert enum["default"] == "unknown"


def test_registry_knows_schemas_by_fingerprint(versions):
    registry = SchemaRegistry(list(versions.values()))
    assert len(registry) == 2
    for version in versions.values():
        assert version.fingerprint in registry
        assert registry.get(version.fingerprint) is version
    assert registry.get(b"\x00" * 8) is None


def test_register_returns_the_version_already_known_under_its_fingerprint(versions):
    registry = SchemaRegistry(list(versions.values()))
    # Same schema, different whitespace: same canonical form, so the same fingerprint.
    text = json.dumps(versions["1.1"].schema, indent=4)
    assert registry.register(text) is versions["1.1"]
    assert len(registry) == 2


def test_register_adds_a_new_writer_schema(versions):
    registry = SchemaRegistry(list(versions.values()))
    schema = json.loads(json.dumps(versions["1.1"].schema))
    schema["fields"].append({"name": "extra", "type": ["null", "long"], "default": None})
    added = registry.register(json.dumps(schema).encode("utf-8"), "epoch_summary", "1.2")
    assert added.version == "1.2"
    assert added.fingerprint not in (versions["1.0"].fingerprint, versions["1.1"].fingerprint)
    assert registry.get(added.fingerprint) is added
    assert len(registry) == 3


@pytest.mark.parametrize(
    "text",
    [
        "not json {",
        '{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}',
        '"nope"',
        '{"type": "no_such_type"}',
        '{"type": "enum", "name": "E", "symbols": ["a", "a"]}',
        "[" * 100_000 + "]" * 100_000,  # nested past the recursion limit (a poison on the schema topic)
    ],
)
def test_register_rejects_text_that_is_not_a_valid_avro_schema(text):
    with pytest.raises(SchemaLoadError):
        SchemaRegistry().register(text)


def test_load_family_without_files_is_a_schema_load_error(tmp_path):
    with pytest.raises(SchemaLoadError, match="no schema files"):
        load_family("epoch_summary", tmp_path)


def test_load_family_orders_versions_numerically(tmp_path):
    for minor in (10, 2, 0):
        schema = {"type": "record", "name": "R", "fields": [{"name": f"f{minor}", "type": "int"}]}
        (tmp_path / f"thing_v1.{minor}.avsc").write_text(json.dumps(schema), encoding="utf-8")
    (tmp_path / "thing_notes.txt").write_text("ignored", encoding="utf-8")
    assert [v.version for v in load_family("thing", tmp_path)] == ["1.0", "1.2", "1.10"]
    assert list_families(tmp_path) == ["thing"]
