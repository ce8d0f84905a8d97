"""The command line of SPEC §7: output formats, exit codes, one-line errors, stdin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ppo_telemetry.cli import main
from ppo_telemetry.demo import synthetic_run, write_segments

VALIDATE_KEYS = ["line", "status", "telemetry_version", "run_id", "log_stream_offset", "errors", "warnings"]
DRIFT_KEYS = ["run_id", "baseline_run_ids", "windows_compared", "fields", "skipped_fields"]
DRIFT_FIELD_KEYS = ["verdict", "first_step", "direction", "effect", "relative_change"]
WATCH_KEYS = [
    "run_id", "rule", "state", "severity", "epoch", "global_step", "log_stream_offset", "value", "reference",
    "since_epoch", "summary",
]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_ndjson(path: Path, records: list, extra_lines: list[str] = ()) -> Path:
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def v1_0(record: dict) -> dict:
    from avro_schemas import VERSION_FIELDS

    out = {k: record[k] for k in VERSION_FIELDS["1.0"]}
    out["telemetry_version"] = "1.0"
    return out


@pytest.fixture
def run_records() -> list[dict]:
    return synthetic_run("run-a", 12, seed=3, unstable=True)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


# ------------------------------------------------------------------------------------------- validate


def test_validate_json_emits_one_object_per_nonblank_line_in_order(tmp_path, capsys, run_records):
    path = tmp_path / "s.ndjson"
    path.write_text(json.dumps(run_records[0]) + "\n\n   \n" + json.dumps(run_records[1]) + "\n")
    code, out, err = run_cli(capsys, "validate", str(path), "--json")
    docs = json_lines(out)
    assert code == 0
    assert [d["line"] for d in docs] == [1, 4]
    assert all(list(d) == VALIDATE_KEYS for d in docs)
    assert docs[0] == {
        "line": 1, "status": "valid", "telemetry_version": "1.1", "run_id": "run-a",
        "log_stream_offset": 0, "errors": [], "warnings": [],
    }
    assert "2 valid, 0 invalid, 0 duplicate" in err


def test_validate_exits_1_and_names_field_and_rule_of_invalid_record(tmp_path, capsys, run_records):
    bad = dict(run_records[2], clip_fraction=1.5)
    path = write_ndjson(tmp_path / "s.ndjson", [run_records[0], bad], ["{not json", "[1, 2]"])
    code, out, err = run_cli(capsys, "validate", str(path), "--json")
    docs = json_lines(out)
    assert code == 1
    assert [d["status"] for d in docs] == ["valid", "invalid", "invalid", "invalid"]
    assert docs[1]["errors"] == [{"field": "clip_fraction", "rule": "range", "message": docs[1]["errors"][0]["message"]}]
    assert docs[1]["run_id"] == "run-a" and docs[1]["log_stream_offset"] == 2
    assert docs[2]["errors"][0]["field"] is None and docs[2]["errors"][0]["rule"] == "json"
    assert docs[2]["telemetry_version"] is None and docs[2]["run_id"] is None
    assert docs[3]["errors"][0]["rule"] == "object"
    assert "3 invalid" in err


def test_validate_reports_duplicates_and_gaps_without_failing(tmp_path, capsys, run_records):
    path = write_ndjson(tmp_path / "s.ndjson", [run_records[0], run_records[1], run_records[1], run_records[4]])
    code, out, _ = run_cli(capsys, "validate", str(path), "--json")
    docs = json_lines(out)
    assert code == 0
    assert [d["status"] for d in docs] == ["valid", "valid", "duplicate", "valid"]
    assert docs[2]["errors"] == []
    assert any("2 records missing" in w for w in docs[3]["warnings"])


def test_validate_v1_0_record_with_extra_keys_is_valid_with_warning(tmp_path, capsys, run_records):
    record = dict(v1_0(run_records[0]), cycle_id=4)
    path = write_ndjson(tmp_path / "s.ndjson", [record])
    code, out, _ = run_cli(capsys, "validate", str(path), "--json")
    (doc,) = json_lines(out)
    assert code == 0 and doc["status"] == "valid" and doc["telemetry_version"] == "1.0"
    assert doc["log_stream_offset"] is None
    assert len(doc["warnings"]) == 1 and "cycle_id" in doc["warnings"][0]


def test_validate_reads_segment_directory_in_offset_order_across_rotation(tmp_path, capsys, run_records):
    lines = [(r["log_stream_offset"], json.dumps(r)) for r in run_records]
    segments = write_segments(tmp_path / "seg", lines, max_bytes=2000)
    assert len(segments) > 2
    code, out, _ = run_cli(capsys, "validate", str(tmp_path / "seg"), "--json")
    docs = json_lines(out)
    assert code == 0
    assert [d["log_stream_offset"] for d in docs] == list(range(len(run_records)))
    assert {d["status"] for d in docs} == {"valid"}


def test_validate_in_segment_directory_holds_back_partial_last_line(tmp_path, capsys, run_records):
    lines = [(r["log_stream_offset"], json.dumps(r)) for r in run_records[:3]]
    (segment,) = write_segments(tmp_path / "seg", lines, max_bytes=1 << 20)
    with open(segment, "ab") as handle:
        handle.write(json.dumps(run_records[3])[:50].encode())  # a writer still appending
    code, out, _ = run_cli(capsys, "validate", str(tmp_path / "seg"), "--json")
    assert code == 0
    assert [d["log_stream_offset"] for d in json_lines(out)] == [0, 1, 2]


def test_validate_reads_stdin_when_path_is_dash(capsys, run_records, monkeypatch):
    import io

    data = (json.dumps(run_records[0]) + "\n" + json.dumps(run_records[1])).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, out, _ = run_cli(capsys, "validate", "-", "--json")
    assert code == 0
    assert [d["line"] for d in json_lines(out)] == [1, 2]


def test_validate_numbers_lines_across_several_inputs(tmp_path, capsys, run_records):
    a = write_ndjson(tmp_path / "a.ndjson", run_records[:2])
    b = write_ndjson(tmp_path / "b.ndjson", run_records[2:3])
    _, out, _ = run_cli(capsys, "validate", str(a), str(b), "--json")
    assert [d["line"] for d in json_lines(out)] == [1, 2, 3]


def test_validate_invalid_utf8_line_is_one_invalid_record(tmp_path, capsys, run_records):
    path = tmp_path / "s.ndjson"
    path.write_bytes(json.dumps(run_records[0]).encode() + b"\n\xff\xfe{}\n")
    code, out, _ = run_cli(capsys, "validate", str(path), "--json")
    docs = json_lines(out)
    assert code == 1
    assert docs[1]["status"] == "invalid" and docs[1]["errors"][0]["rule"] == "json"


def test_validate_missing_file_is_one_line_exit_2(capsys, tmp_path):
    code, out, err = run_cli(capsys, "validate", str(tmp_path / "nope.ndjson"), "--json")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "nope.ndjson" in err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["validate"],
        ["validate", "x", "--bogus"],
        ["drift", "x"],
        ["codec"],
        ["codec", "encode", "a", "b"],
    ],
    ids=["no-command", "unknown-command", "validate-no-path", "unknown-flag", "drift-no-baseline", "codec-no-action", "codec-two-paths"],
)
def test_usage_errors_are_one_line_on_stderr_with_exit_2(capsys, argv):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("ppo-telemetry: error: ")


def test_console_script_usage_error_has_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("ppo-telemetry")
    proc = subprocess.run([str(exe), "validate", str(tmp_path / "missing")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------- drift


def test_drift_json_one_object_per_current_run_with_spec_keys(tmp_path, capsys):
    baseline = write_ndjson(
        tmp_path / "base.ndjson",
        synthetic_run("base-1", 40, seed=0, unstable=False) + synthetic_run("base-2", 40, seed=5, unstable=False),
    )
    current = write_ndjson(
        tmp_path / "cur.ndjson",
        synthetic_run("cur-1", 24, seed=1, unstable=False) + [v1_0(r) for r in synthetic_run("cur-2", 40, seed=2, unstable=False)],
    )
    code, out, _ = run_cli(capsys, "drift", "--baseline", str(baseline), str(current), "--json")
    docs = json_lines(out)
    assert code == 0
    assert [d["run_id"] for d in docs] == ["cur-1", "cur-2"]
    assert all(list(d) == DRIFT_KEYS for d in docs)
    assert docs[0]["baseline_run_ids"] == ["base-1", "base-2"]
    # 4 epochs per 2,048-step cycle; windows of one cycle (a twentieth of the baseline would be shorter)
    assert docs[0]["windows_compared"] == 6 and docs[1]["windows_compared"] == 10
    assert all(list(f) == DRIFT_FIELD_KEYS for d in docs for f in d["fields"].values())
    assert docs[0]["fields"]["policy_loss"]["verdict"] in ("same", "differs")
    # a v1.0 current run has none of the v1.1 metrics: skipped, with the reason
    assert docs[1]["skipped_fields"]["batch_entropy_mean"] == "missing_in_current"
    assert docs[1]["fields"]["batch_entropy_mean"] == dict.fromkeys(DRIFT_FIELD_KEYS) | {"verdict": "skipped"}
    assert "epoch_duration_sec" not in docs[0]["fields"]


def test_drift_flags_a_change_with_its_step_direction_and_size(tmp_path, capsys):
    base = synthetic_run("b1", 60, seed=0, unstable=False) + synthetic_run("b2", 60, seed=1, unstable=False)
    changed = [dict(r, value_loss=r["value_loss"] * 50) if r["epoch"] >= 20 else r
               for r in synthetic_run("cur", 60, seed=2, unstable=False)]
    baseline = write_ndjson(tmp_path / "base.ndjson", base)
    current = write_ndjson(tmp_path / "cur.ndjson", changed)
    code, out, _ = run_cli(capsys, "drift", "--baseline", str(baseline), str(current), "--json")
    (doc,) = json_lines(out)
    value_loss = doc["fields"]["value_loss"]
    assert code == 0 and value_loss["verdict"] == "differs" and value_loss["direction"] == "higher"
    assert value_loss["first_step"] == 12_288  # epoch 20 is in cycle 6 (step 12,288), a window of its own
    assert value_loss["relative_change"] > 20 and value_loss["effect"] > 3
    code, out, _ = run_cli(capsys, "drift", "--baseline", str(baseline), str(current))
    assert code == 0
    assert out.splitlines()[0] == "run cur vs baseline b1, b2: 15 windows of 2,048 steps compared"
    line = next(line for line in out.splitlines() if line.split()[0] == "value_loss")
    assert "differs  higher from step 12,288, effect +" in line and "% vs baseline" in line


def test_drift_baseline_paths_repeat_and_a_directory_of_runs_counts_every_run(tmp_path, capsys):
    for seed in (0, 1):
        records = synthetic_run(f"b{seed}", 8, seed=seed, unstable=False)
        write_segments(tmp_path / "runs" / f"seed{seed}", [(i, json.dumps(r)) for i, r in enumerate(records)], 1 << 20)
    current = write_ndjson(tmp_path / "cur.ndjson", synthetic_run("c", 8, seed=2, unstable=False))
    _, out, _ = run_cli(capsys, "drift", "--baseline", str(tmp_path / "runs"), str(current), "--json")
    assert json_lines(out)[0]["baseline_run_ids"] == ["b0", "b1"]
    _, out, _ = run_cli(capsys, "drift", "--baseline", str(tmp_path / "runs" / "seed1"),
                        "--baseline", str(tmp_path / "runs" / "seed0"), str(current), "--json")
    assert json_lines(out)[0]["baseline_run_ids"] == ["b1", "b0"]


def test_drift_baseline_run_picks_runs_and_an_absent_one_is_one_line(tmp_path, capsys):
    baseline = write_ndjson(
        tmp_path / "base.ndjson",
        synthetic_run("b1", 4, seed=0, unstable=False) + synthetic_run("b2", 4, seed=1, unstable=False),
    )
    current = write_ndjson(tmp_path / "cur.ndjson", synthetic_run("c", 4, seed=2, unstable=False))
    code, out, _ = run_cli(capsys, "drift", "--baseline", str(baseline), "--baseline-run", "b2", str(current), "--json")
    assert code == 0 and json_lines(out)[0]["baseline_run_ids"] == ["b2"]
    code, out, err = run_cli(capsys, "drift", "--baseline", str(baseline), "--baseline-run", "b9", str(current), "--json")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "'b9' not found" in err


def test_drift_does_not_compare_a_baseline_run_with_itself(tmp_path, capsys):
    both = write_ndjson(
        tmp_path / "both.ndjson",
        synthetic_run("b1", 4, seed=0, unstable=False) + synthetic_run("c", 4, seed=2, unstable=False),
    )
    _, out, _ = run_cli(capsys, "drift", "--baseline", str(both), "--baseline-run", "b1", str(both), "--json")
    assert [d["run_id"] for d in json_lines(out)] == ["c"]


def test_drift_skips_invalid_records_and_says_so(tmp_path, capsys):
    base = synthetic_run("base", 4, seed=0, unstable=False)
    cur = synthetic_run("cur", 4, seed=1, unstable=False)
    baseline = write_ndjson(tmp_path / "base.ndjson", base)
    current = write_ndjson(tmp_path / "cur.ndjson", cur, ["garbage"])
    code, out, err = run_cli(capsys, "drift", "--baseline", str(baseline), str(current), "--json")
    assert code == 0 and json_lines(out)[0]["windows_compared"] == 1
    assert "skipped invalid record" in err


# ---------------------------------------------------------------------------------------------- watch


def test_watch_json_emits_transitions_with_spec_keys(tmp_path, capsys):
    records = synthetic_run("run-w", 240, seed=1, unstable=True)
    path = write_ndjson(tmp_path / "w.ndjson", records)
    code, out, _ = run_cli(capsys, "watch", str(path), "--json")
    docs = json_lines(out)
    assert code == 0 and docs
    assert all(list(d) == WATCH_KEYS for d in docs)
    entropy = [d for d in docs if d["rule"] == "entropy_collapse"]
    assert [d["state"] for d in entropy] == ["firing"]
    fired = entropy[0]
    source = records[fired["epoch"]]
    assert (fired["severity"], fired["global_step"], fired["log_stream_offset"]) == (
        "critical", source["global_step"], source["log_stream_offset"])
    assert fired["value"] == source["batch_entropy_mean"] < fired["reference"]
    assert fired["since_epoch"] <= fired["epoch"] and "entropy" in fired["summary"]


def test_watch_human_output_is_one_line_per_transition(tmp_path, capsys):
    path = write_ndjson(tmp_path / "w.ndjson", synthetic_run("run-w", 240, seed=1, unstable=True))
    _, as_json, _ = run_cli(capsys, "watch", str(path), "--json")
    code, out, _ = run_cli(capsys, "watch", str(path))
    lines = out.splitlines()
    assert code == 0 and len(lines) == len(json_lines(as_json)) >= 2
    first = json_lines(as_json)[0]
    assert lines[0].startswith(f"run-w epoch {first['epoch']} step {first['global_step']}: {first['rule']} FIRING [")
    assert lines[0].endswith(first["summary"])


def test_watch_rules_file_overrides_and_disables(tmp_path, capsys):
    records = synthetic_run("run-w", 240, seed=1, unstable=True)
    path = write_ndjson(tmp_path / "w.ndjson", records)
    rules = tmp_path / "rules.toml"
    rules.write_text("[entropy_collapse]\nenabled = false\n[gae_sanity]\nthreshold = -0.5\n[kl_spike]\nwarmup = 0\nhold = 1\nfloor = 0.05\nfactor = 2\n")
    code, out, _ = run_cli(capsys, "watch", str(path), "--rules", str(rules), "--json")
    rules_fired = {d["rule"] for d in json_lines(out)}
    assert code == 0
    assert "entropy_collapse" not in rules_fired and "gae_sanity" not in rules_fired
    assert "kl_spike" in rules_fired  # the spikes at epochs 9-10 and 23, no longer hidden by the warm-up


@pytest.mark.parametrize(
    "text",
    ["[no_such_rule]\nhold = 1\n", "[kl_spike]\nlimit = 1\n", "[kl_spike\n", "[kl_spike]\nhold = 0\n"],
    ids=["rule", "key", "syntax", "range"],
)
def test_watch_bad_rules_file_is_usage_error(tmp_path, capsys, text):
    path = write_ndjson(tmp_path / "w.ndjson", synthetic_run("r", 2, seed=0, unstable=False))
    rules = tmp_path / "rules.toml"
    rules.write_text(text)
    code, out, err = run_cli(capsys, "watch", str(path), "--rules", str(rules), "--json")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------- codec


def test_codec_encode_then_decode_round_trips_both_versions(tmp_path, capsys, run_records):
    records = [run_records[0], v1_0(run_records[1])]
    source = write_ndjson(tmp_path / "in.ndjson", records)
    code, hex_out, _ = run_cli(capsys, "codec", "encode", str(source))
    assert code == 0
    hex_lines = hex_out.splitlines()
    assert len(hex_lines) == 2 and all(line.startswith("c301") for line in hex_lines)
    hex_file = tmp_path / "msgs.hex"
    hex_file.write_text(hex_out)
    code, out, _ = run_cli(capsys, "codec", "decode", str(hex_file))
    assert code == 0
    assert json_lines(out) == records  # each with its writer version's fields, in schema order
    assert list(json_lines(out)[1]) == list(records[1])


def test_codec_reads_stdin_without_path(capsys, run_records, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(json.dumps(run_records[0]).encode() + b"\n")))
    code, out, _ = run_cli(capsys, "codec", "encode")
    assert code == 0 and len(out.splitlines()) == 1


def test_codec_decode_bad_lines_are_reported_and_skipped(tmp_path, capsys, run_records):
    from avro_schemas import epoch_summary_codec

    good = epoch_summary_codec().encode(run_records[0]).hex()
    path = tmp_path / "in.hex"
    path.write_text("\n".join(["zz-not-hex", "c301" + "00" * 8, good[:-6], good]) + "\n")
    code, out, err = run_cli(capsys, "codec", "decode", str(path))
    assert code == 1
    assert json_lines(out) == [run_records[0]]
    lines = err.strip().splitlines()
    assert len(lines) == 3
    assert "line 1" in lines[0] and "line 2: unknown writer schema fingerprint" in lines[1] and "line 3: truncated" in lines[2]


def test_codec_encode_refuses_invalid_records_with_one_line_each(tmp_path, capsys, run_records):
    path = write_ndjson(tmp_path / "in.ndjson", [dict(run_records[0], epoch=-1), run_records[1]], ["nope"])
    code, out, err = run_cli(capsys, "codec", "encode", str(path))
    assert code == 1 and len(out.splitlines()) == 1
    assert len(err.strip().splitlines()) == 2 and "epoch" in err


# -------------------------------------------------------------------------------------------- schemas


def test_schemas_check_passes_on_shipped_schemas(capsys):
    code, out, _ = run_cli(capsys, "schemas", "check")
    assert code == 0 and "epoch_summary" in out and "FULL_TRANSITIVE" in out


def test_schemas_check_rejects_incompatible_fixture_naming_field(capsys):
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "incompatible"
    code, out, _ = run_cli(capsys, "schemas", "check", "--dir", str(fixtures))
    assert code == 1
    assert "'cycle_id' has no default" in out
    assert "field 'epoch'" in out
