"""`ppo-telemetry report` from NDJSON: what the page embeds and shows equals the records and the cores'
own answers (validator, watch, drift); broken inputs are counted, usage errors are one line and exit 2."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from avro_schemas.fields import VERSION_FIELDS
from avro_schemas.models import EpochSummary
from consumers.drift import DRIFT_FIELDS, Baseline, DriftTracker
from consumers.telemetry_watch import Watch, load_rules
from ppo_telemetry.cli import main
from ppo_telemetry.demo import synthetic_run
from ppo_telemetry.report import METRICS, gather_report, render_html

WATCH_RULES = Path(__file__).parents[1] / "integration" / "watch_rules.toml"
V1_1_ONLY = set(VERSION_FIELDS["1.1"]) - set(VERSION_FIELDS["1.0"])


def write_ndjson(path: Path, records: list[dict], extra_lines: list[str] = ()) -> Path:
    lines = [json.dumps(record) for record in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def run_report(tmp_path: Path, *args: str) -> tuple[int, dict | None, str]:
    """Run the command; (exit code, the page's embedded data or None, the page's HTML or '')."""
    out = tmp_path / "report.html"
    code = main(["report", *args, "-o", str(out)])
    if code != 0 or not out.exists():
        return code, None, ""
    page = out.read_text()
    return code, embedded_data(page), page


def embedded_data(page: str) -> dict:
    match = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', page, re.S)
    return json.loads(match.group(1))


class _Cells(HTMLParser):
    """The `data-value` of every cell of one table row, keyed by the row's `data-<key>`."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = f"data-{key}"
        self.rows: dict[str, list[str]] = {}
        self._row: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and self.key in attrs:
            self._row = self.rows.setdefault(attrs[self.key], [])
        elif tag == "td" and self._row is not None and "data-value" in attrs:
            self._row.append(attrs["data-value"])

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None


def table_values(page: str, key: str) -> dict[str, list[str]]:
    cells = _Cells(key)
    cells.feed(page)
    return cells.rows


# ------------------------------------------------------------------------------------ the numbers


def test_embedded_series_and_metrics_table_equal_the_records(tmp_path):
    records = synthetic_run("report-run", 40, seed=3, unstable=False)
    records[5]["mean_episode_return"] = None  # a null breaks the line, it is not a number
    path = write_ndjson(tmp_path / "run.ndjson", records)

    code, data, page = run_report(tmp_path, str(path))

    assert code == 0
    assert data["run_id"] == "report-run" and data["records"] == 40
    plotted = {metric["name"]: metric for metric in data["metrics"]}
    assert list(plotted) == [name for name in METRICS if name in records[0]]
    assert data["global_step"] == [r["global_step"] for r in records]
    for name, metric in plotted.items():
        assert metric["values"] == [r[name] for r in records]
    table = table_values(page, "metric")
    for name in plotted:
        present = [r[name] for r in records if r[name] is not None]
        count, first, last, low, high = (float(v) for v in table[name])
        assert (count, first, last, low, high) == (len(present), present[0], present[-1], min(present), max(present))
    # one figure per metric, each with its series path
    assert page.count('<figure id="plot-') == len(plotted)
    assert page.count('class="series" d="M') == len(plotted)


def test_page_refers_to_nothing_outside_itself(tmp_path):
    path = write_ndjson(tmp_path / "run.ndjson", synthetic_run("self-contained", 30, seed=1, unstable=True))
    baseline = write_ndjson(tmp_path / "base.ndjson", synthetic_run("base", 30, seed=2, unstable=False))

    code, _, page = run_report(tmp_path, str(path), "--baseline", str(baseline))

    assert code == 0
    assert "<script src" not in page and "<link" not in page and "<img" not in page and "@import" not in page
    assert "url(" not in page.replace("url(#clip-", "")  # only the plots' own clip paths
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) == {"http://www.w3.org/2000/svg"}  # a namespace, not fetched


# ------------------------------------------------------------------------------------ broken input


def test_broken_lines_are_counted_per_rule_never_a_traceback(tmp_path, capsys):
    records = synthetic_run("broken-input", 20, seed=4, unstable=False)
    bad_range = dict(records[3], clip_fraction=1.5, log_stream_offset=100)
    path = write_ndjson(tmp_path / "run.ndjson", records, [
        "not json at all",
        json.dumps(bad_range),
        json.dumps(records[7]),  # re-sent: a duplicate
        '{"telemetry_version": "9.9", "run_id": "broken-input"}',
        "[1, 2, 3]",
        '{"telemetry_version": "1.1", "run_id": "broken-input", "value_loss": NaN}',
    ])

    code, data, page = run_report(tmp_path, str(path))

    assert code == 0
    assert "Traceback" not in capsys.readouterr().err
    validity = data["validity"]
    assert (validity["valid"], validity["duplicate"]) == (20, 1)
    assert validity["invalid"] == 5
    assert validity["of_no_run"] == 2  # not JSON, not an object: no run_id to belong to
    assert validity["invalid_by_rule"]["json"] == 1
    assert validity["invalid_by_rule"]["object"] == 1
    assert validity["invalid_by_rule"]["range"] == 1
    assert validity["invalid_by_rule"]["version"] == 1
    assert validity["invalid_by_rule"]["finite"] == 1
    assert [e["where"] for e in validity["examples"]] == ["line 21", "line 22", "line 24", "line 25", "line 26"]
    assert data["records"] == 20  # only valid, non-duplicate records are plotted
    shown = table_values(page, "outcome")
    assert {k: int(v[0]) for k, v in shown.items()} == {
        "valid": 20, "invalid": 5, "duplicate": 1, "warnings": 0, "of_no_run": 2}


def test_an_input_with_no_valid_record_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.ndjson"
    path.write_text("garbage\n{}\n")

    code, _, _ = run_report(tmp_path, str(path))

    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "no valid record" in err


@pytest.mark.parametrize("which", ["input", "baseline"])
def test_a_missing_file_is_one_line_exit_2(tmp_path, capsys, which):
    present = write_ndjson(tmp_path / "run.ndjson", synthetic_run("present", 8, seed=1, unstable=False))
    missing = str(tmp_path / "nowhere.ndjson")
    args = [missing] if which == "input" else [str(present), "--baseline", missing]

    code, _, _ = run_report(tmp_path, *args)

    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "no such file or directory" in err and "nowhere.ndjson" in err
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize("args, message", [
    ([], "one of them"),
    (["run.ndjson", "--bootstrap-servers", "127.0.0.1:1"], "one of them"),
    (["--bootstrap-servers", "127.0.0.1:1"], "needs --run-id"),
])
def test_usage_errors_are_one_line_exit_2(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write_ndjson(tmp_path / "run.ndjson", synthetic_run("usage", 8, seed=1, unstable=False))

    code, _, _ = run_report(tmp_path, *args)

    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err


# ------------------------------------------------------------------------------------ several runs


def test_several_runs_need_run_id_which_picks_one(tmp_path, capsys):
    first = synthetic_run("run-a", 12, seed=1, unstable=False)
    second = synthetic_run("run-b", 12, seed=2, unstable=False)
    path = write_ndjson(tmp_path / "runs.ndjson", [r for pair in zip(first, second, strict=True) for r in pair])

    code, _, _ = run_report(tmp_path, str(path))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "2 runs" in err and "run-a, run-b" in err

    code, data, _ = run_report(tmp_path, str(path), "--run-id", "run-b")
    assert code == 0 and data["run_id"] == "run-b"
    assert data["metrics"][0]["values"] == [r[data["metrics"][0]["name"]] for r in second]
    assert data["validity"]["valid"] == 12  # the other run's records are not this run's
    capsys.readouterr()

    code, _, _ = run_report(tmp_path, str(path), "--run-id", "run-c")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "run-c" in err and "run-a, run-b" in err


# ------------------------------------------------------------------------------------ baseline, drift, alerts


def _inputs(records):
    from consumers.validator import Validator

    validator = Validator()
    return [(f"line {i}", validator.validate(dict(r))) for i, r in enumerate(records, start=1)]


def on_field_scale(spec, compared: float) -> float:
    return math.exp(compared) - spec.offset if spec.log else compared


def test_baseline_band_is_drifts_tolerance_or_the_baseline_range(tmp_path):
    baseline = synthetic_run("base-1", 40, seed=1, unstable=False) + synthetic_run("base-2", 40, seed=2, unstable=False)
    current = synthetic_run("current", 40, seed=3, unstable=True)

    report = gather_report(_inputs(current), baseline)

    model = Baseline.from_records(baseline)
    width = model.window_steps
    bands = {metric["name"]: metric for metric in report["metrics"]}
    for i, name in enumerate(DRIFT_FIELDS):
        metric = bands[name]
        assert metric["band_kind"] == "tolerance"
        spec = model.specs[i]
        windows = enumerate(zip(model.level[i], model.noise[i], strict=True))
        known = [(w, level, noise) for w, (level, noise) in windows if level is not None]
        assert [b["start"] for b in metric["band"]] == [w * width for w, _, _ in known]
        for band, (_, level, noise) in zip(metric["band"], known, strict=True):
            assert band["mid"] == pytest.approx(on_field_scale(spec, level))
            assert band["low"] == pytest.approx(on_field_scale(spec, level - 3.0 * noise))
            assert band["high"] == pytest.approx(on_field_scale(spec, level + 3.0 * noise))
    duration = bands["epoch_duration_sec"]
    assert duration["band_kind"] == "range"
    for band in duration["band"]:
        inside = [r["epoch_duration_sec"] for r in baseline if band["start"] <= r["global_step"] < band["end"]]
        assert (band["low"], band["high"]) == (min(inside), max(inside))


def test_drift_verdicts_are_the_drift_cores(tmp_path):
    baseline = synthetic_run("base-1", 40, seed=1, unstable=False) + synthetic_run("base-2", 40, seed=2, unstable=False)
    current = synthetic_run("current", 40, seed=3, unstable=True)
    base_path = write_ndjson(tmp_path / "base.ndjson", baseline)
    path = write_ndjson(tmp_path / "run.ndjson", current)

    code, data, page = run_report(tmp_path, str(path), "--baseline", str(base_path))

    tracker = DriftTracker(Baseline.from_records(baseline))
    for record in current:
        tracker.observe(record)
    expected = tracker.summary("current").to_json_dict()
    assert code == 0
    assert {k: data["drift"][k] for k in expected} == expected
    assert any(v["verdict"] == "differs" for v in expected["fields"].values())
    shown = {m.group(1): m.group(2) for m in re.finditer(r'<tr data-field="(\w+)" data-verdict="(\w+)"', page)}
    assert shown == {name: v["verdict"] for name, v in expected["fields"].items()}


def test_a_baseline_run_is_not_compared_with_itself(tmp_path):
    run = synthetic_run("both", 30, seed=1, unstable=False)
    report = gather_report(_inputs(run), run)
    assert report["drift"]["note"].startswith("the run is one of the baseline runs")
    assert "the run is one of the baseline runs" in render_html(report)


def test_alert_spans_are_the_watch_cores_firing_to_resolved_intervals():
    records = synthetic_run("alerting", 60, seed=5, unstable=True)
    rules = load_rules(WATCH_RULES)

    report = gather_report(_inputs(records), rules=rules)

    watch = Watch(rules)
    transitions = [t for r in records for t in watch.observe(EpochSummary.from_dict(r))]
    assert transitions, "the unstable run fires with the fast rules"
    expected, open_by_rule = [], {}
    for t in transitions:
        if t.state == "firing":
            open_by_rule[t.rule] = [t.rule, t.global_step, None]
            expected.append(open_by_rule[t.rule])
        else:
            open_by_rule.pop(t.rule)[2] = t.global_step
    assert [[s["rule"], s["start_step"], s["end_step"]] for s in report["alerts"]] == expected
    page = render_html(report)
    assert page.count('class="alert-span"') == len(expected) * len(report["metrics"])


def test_a_run_without_baseline_has_no_band_and_no_drift():
    report = gather_report(_inputs(synthetic_run("alone", 20, seed=1, unstable=False)))
    assert report["drift"] is None
    assert all(metric["band"] == [] for metric in report["metrics"])
    assert "No baseline given" in render_html(report)


def test_a_pixel_column_keeps_its_first_lowest_highest_and_last_point():
    from ppo_telemetry.report import _Axes, _series_path

    axes = _Axes(0, 1000, 0, 100, log=False)
    steps = [0] * 10 + [1000] * 10 + [1000]
    values = [5, 9, 1, 7, 3, 8, 2, 6, 4, 5] + [50 + v for v in (5, 9, 1, 7, 3, 8, 2, 6, 4, 5)] + [None]

    path = _series_path(steps, values, axes)

    points = [(float(x), float(y)) for x, y in re.findall(r"[ML]([\d.]+) ([\d.]+)", path)]
    assert [axes.y(v) for v in (5, 9, 1, 5, 55, 59, 51, 55)] == pytest.approx([y for _, y in points], abs=0.05)
    assert path.count("M") == 1  # the trailing null ends the line, it starts no other


def test_an_unwritable_output_is_one_line_exit_2(tmp_path, capsys):
    path = write_ndjson(tmp_path / "run.ndjson", synthetic_run("unwritable", 8, seed=1, unstable=False))
    target = tmp_path / "no-such-directory" / "report.html"

    code = main(["report", str(path), "-o", str(target)])

    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"cannot write {target}" in err


def test_v1_0_records_plot_their_own_fields_only(tmp_path):
    v1_0 = [{k: v for k, v in r.items() if k not in V1_1_ONLY} | {"telemetry_version": "1.0"}
            for r in synthetic_run("old", 12, seed=1, unstable=False)]
    path = write_ndjson(tmp_path / "old.ndjson", v1_0)

    code, data, page = run_report(tmp_path, str(path))

    assert code == 0 and data["telemetry_versions"] == ["1.0"]
    assert [m["name"] for m in data["metrics"]] == [name for name in METRICS if name not in V1_1_ONLY]
    assert page.count('<figure id="plot-') == len(data["metrics"])


def test_the_watch_groups_transitions_are_compared_with_the_cores():
    records = synthetic_run("written", 60, seed=5, unstable=True)
    rules = load_rules(WATCH_RULES)
    watch = Watch(rules)
    transitions = [t.to_json_dict() for r in records for t in watch.observe(EpochSummary.from_dict(r))]

    same = gather_report(_inputs(records), rules=rules, written_alerts=transitions)
    fewer = gather_report(_inputs(records), rules=rules, written_alerts=transitions[:-1])
    none = gather_report(_inputs(records), rules=rules, written_alerts=[])
    not_read = gather_report(_inputs(records), rules=rules)

    assert same["alerts_written"]["agree"] and same["alerts_written"]["count"] == len(transitions)
    assert 'data-agree="true"' in render_html(same)
    assert not fewer["alerts_written"]["agree"] and "not the ones below" in render_html(fewer)
    assert not none["alerts_written"]["agree"] and "holds no transition of this run" in render_html(none)
    assert not_read["alerts_written"] is None and 'id="alerts-written"' not in render_html(not_read)
