"""The demo's story and its lines: the four runs, drift verdicts and alert transitions (v1.0 and v1.1)."""

from __future__ import annotations

from ppo_telemetry.demo import CANDIDATE_CHANGE, FAULT, demo_runs, format_alert, format_verdicts


def _verdict(verdict: str, **fields) -> dict:
    empty = {"first_step": None, "direction": None, "effect": None, "relative_change": None}
    return {"verdict": verdict, **empty, **fields}


def test_demo_runs_are_two_baseline_seeds_a_candidate_and_a_fault_run():
    runs = demo_runs("T", 30_000)
    assert [(run.role, run.seed) for run in runs] == [("baseline", 0), ("baseline", 1), ("candidate", 2), ("fault", 3)]
    assert runs[0].change == runs[1].change == ()
    assert runs[2].change == CANDIDATE_CHANGE
    assert runs[3].change == ("--fault", f"{FAULT}@12000")  # 40 % of the run
    assert len({run.run_id for run in runs}) == 4
    assert runs[3].label == f"fault (seed 3, --fault {FAULT}@12000)"


def test_verdicts_name_each_differing_field_with_its_evidence():
    record = {"fields": {
        "policy_loss": _verdict("same", effect=0.4),
        "batch_entropy_mean": _verdict(
            "differs", first_step=21_504, direction="higher", effect=5.2, relative_change=9.498
        ),
        "kl_divergence": _verdict("differs", first_step=12_288, direction="lower", effect=-6.6, relative_change=None),
        "rollout_ticks": _verdict("skipped"),
    }}
    lines = format_verdicts(record)
    assert lines == [
        "batch_entropy_mean     differs: higher from step 21,504, effect +5.2, relative change +949.8%",
        "kl_divergence          differs: lower from step 12,288, effect -6.6",
    ]


def test_verdicts_say_when_no_field_differs():
    record = {"fields": {"policy_loss": _verdict("same", effect=0.4), "rollout_ticks": _verdict("skipped")}}
    assert format_verdicts(record) == ["no field differs (1 compared fields the same)"]


def test_alert_line_of_v1_1_shows_severity_step_and_summary():
    alert = {
        "run_id": "r", "rule": "grad_explosion", "state": "firing", "severity": "critical", "epoch": 929,
        "global_step": 12_032, "log_stream_offset": 929, "value": 458.0, "reference": 7.03, "since_epoch": 920,
        "summary": "gradient norm before clipping 458 is above 7.03", "threshold": 7.03,
    }
    line = format_alert(alert)
    assert line.split()[:7] == ["epoch", "929", "step", "12,032", "grad_explosion", "firing", "critical"]
    assert line.endswith("gradient norm before clipping 458 is above 7.03")


def test_alert_line_of_v1_0_shows_value_and_threshold():
    alert = {"run_id": "r", "rule": "kl_spike", "state": "resolved", "epoch": 7, "value": 0.01, "threshold": 0.05}
    line = format_alert(alert)
    assert line.split()[:4] == ["epoch", "7", "kl_spike", "resolved"]
    assert line.endswith("value 0.01 (threshold 0.05)")
