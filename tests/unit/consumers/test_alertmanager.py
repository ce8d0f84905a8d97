"""The pure core of the Alertmanager poster: transition -> v2 alert, the endpoint, the backoff; and the
command line's checks of `--alertmanager` (consumers/alertmanager.py)."""

from __future__ import annotations

import pytest

from avro_schemas.codec import alert_codec
from consumers.alertmanager import (
    AlertmanagerURLError,
    Backoff,
    FiringAlerts,
    alertmanager_alert,
    alerts_endpoint,
    poster_group,
)
from consumers.telemetry_watch import Transition
from ppo_telemetry.cli import main

# 2023-11-14T22:13:20.123Z
TIMESTAMP_MS = 1_700_000_000_123


def transition(state: str = "firing", **overrides) -> dict:
    fields = dict(
        run_id="CartPole-v1.seed0", rule="kl_spike", state=state, severity="warning", epoch=12, global_step=4096,
        log_stream_offset=12, value=0.0979265619, reference=0.0623471442, since_epoch=9,
        summary="max KL per update 0.0979 is above 0.0623, since epoch 9: updates move the policy too far",
    )
    fields.update(overrides)
    return Transition(**fields).to_avro_dict()


# ------------------------------------------------------------------------------------------ alerts


def test_a_firing_has_the_spec_labels_and_annotations_and_starts_at_its_kafka_time_with_no_end():
    alert = alertmanager_alert(transition("firing"), TIMESTAMP_MS)
    assert alert["labels"] == {"alertname": "kl_spike", "run_id": "CartPole-v1.seed0", "severity": "warning"}
    assert alert["annotations"] == {
        "summary": "max KL per update 0.0979 is above 0.0623, since epoch 9: updates move the policy too far",
        "value": "0.0979266", "reference": "0.0623471", "epoch": "12", "global_step": "4096", "since_epoch": "9",
    }
    assert alert["startsAt"] == "2023-11-14T22:13:20.123Z"
    assert "endsAt" not in alert


def test_a_resolve_ends_at_its_kafka_time_with_the_same_labels_as_its_firing():
    firing = alertmanager_alert(transition("firing"), TIMESTAMP_MS)
    resolved = alertmanager_alert(transition("resolved", epoch=15, value=0.02), TIMESTAMP_MS + 5000)
    assert resolved["labels"] == firing["labels"]  # Alertmanager merges by labels: the same alert
    assert resolved["endsAt"] == resolved["startsAt"] == "2023-11-14T22:13:25.123Z"
    assert resolved["annotations"]["value"] == "0.02"


def test_the_same_transition_posted_again_is_the_same_alert():
    assert alertmanager_alert(transition(), TIMESTAMP_MS) == alertmanager_alert(transition(), TIMESTAMP_MS)


def test_a_critical_rule_keeps_its_severity_label():
    alert = alertmanager_alert(transition(rule="grad_explosion", severity="critical"), TIMESTAMP_MS)
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["alertname"] == "grad_explosion"


def test_a_v1_0_alert_without_summary_or_reference_gets_a_summary_and_its_threshold():
    v1_0 = {"run_id": "r", "rule": "grad_explosion", "state": "firing", "severity": "warning", "epoch": 3,
            "global_step": None, "log_stream_offset": None, "value": 26.5, "reference": None, "since_epoch": None,
            "summary": None, "threshold": 10.0}
    alert = alertmanager_alert(v1_0, TIMESTAMP_MS)
    assert alert["annotations"] == {
        "summary": "grad_explosion firing for run r (value 26.5, reference 10)", "value": "26.5",
        "reference": "10", "epoch": "3",
    }


def test_a_non_finite_value_is_an_annotation_string_too():
    alert = alertmanager_alert(transition(value=float("inf")), TIMESTAMP_MS)
    assert alert["annotations"]["value"] == "inf"


def test_an_alert_read_back_from_its_avro_bytes_maps_like_the_transition():
    codec = alert_codec()
    decoded = codec.decode(codec.encode(transition("resolved")))
    assert alertmanager_alert(decoded, TIMESTAMP_MS) == alertmanager_alert(transition("resolved"), TIMESTAMP_MS)


# ------------------------------------------------------------------------------------------ endpoint


@pytest.mark.parametrize("url, endpoint", [
    ("http://127.0.0.1:9093", "http://127.0.0.1:9093/api/v2/alerts"),
    ("http://alertmanager:9093/", "http://alertmanager:9093/api/v2/alerts"),
    ("https://ops.example.com/alertmanager/", "https://ops.example.com/alertmanager/api/v2/alerts"),
    ("http://[::1]:9093", "http://[::1]:9093/api/v2/alerts"),
])
def test_the_endpoint_is_the_v2_alerts_path_under_the_url(url, endpoint):
    assert alerts_endpoint(url) == endpoint


@pytest.mark.parametrize("url, says", [
    ("127.0.0.1:9093", "http:// or https://"),
    ("ftp://host/", "http:// or https://"),
    ("http://", "no host"),
    ("http:///api", "no host"),
    ("http://host:port", "not a URL"),
    ("http://host:99999", "not a URL"),
    ("http://user:secret@host:9093", "credentials"),
    ("http://host:9093/?x=1", "without '?'"),
    ("", "http:// or https://"),
])
def test_a_bad_url_is_one_line(url, says):
    with pytest.raises(AlertmanagerURLError) as caught:
        alerts_endpoint(url)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)
    assert "secret" not in str(caught.value)


# ------------------------------------------------------------------------------------------ backoff, group


def test_backoff_doubles_up_to_its_cap_and_starts_again_after_a_reset():
    backoff = Backoff(first=0.5, cap=4.0)
    assert [backoff.delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.delay() == 0.5


def test_the_poster_group_sits_beside_the_watch_group_in_its_namespace():
    assert poster_group("ppo-telemetry-watch") == "ppo-telemetry-watch.alertmanager"
    assert poster_group("team-a.ppo-telemetry-watch") == "team-a.ppo-telemetry-watch.alertmanager"


# ------------------------------------------------------------------------------------------ firing alerts


def step(state: str, rule: str = "kl_spike", run_id: str = "run-a") -> tuple[dict, dict]:
    """A transition and its Alertmanager alert."""
    record = transition(state, rule=rule, run_id=run_id)
    return record, alertmanager_alert(record, TIMESTAMP_MS)


def test_alerts_posted_firing_are_re_posted_until_they_resolve():
    firing = FiringAlerts()
    firing.assigned(0)
    kl, kl_alert = step("firing")
    grad, grad_alert = step("firing", rule="grad_explosion")
    firing.posted(0, 0, kl, kl_alert)
    firing.posted(0, 1, grad, grad_alert)
    assert firing.to_repost() == [kl_alert, grad_alert]
    firing.posted(0, 2, *step("resolved"))
    assert firing.to_repost() == [grad_alert]


def test_a_message_that_is_not_an_alert_changes_nothing():
    firing = FiringAlerts()
    firing.assigned(0)
    firing.posted(0, 0, *step("firing"))
    firing.posted(0, 1, None, None)
    assert len(firing.to_repost()) == 1


def test_what_was_posted_before_the_committed_offset_is_read_back_as_firing():
    firing = FiringAlerts()
    firing.assigned(1)
    kl, kl_alert = step("firing")
    firing.read_back(1, 0, 1, kl, kl_alert)
    assert firing.to_repost() == [kl_alert]


def test_no_re_post_until_the_transitions_after_the_committed_offset_are_posted():
    # a crash after posting the resolve (offset 1), before committing it: the firing is read back
    firing = FiringAlerts()
    firing.assigned(0)
    firing.assigned(2)
    kl, kl_alert = step("firing")
    firing.read_back(0, 0, 1, kl, kl_alert)
    firing.read_back(0, 1, 1, None, None)  # not decoded: posted again from the consumer
    firing.read_back(2, 0, -1001, None, None)  # a partition with nothing committed yet
    assert firing.to_repost() is None  # re-posting the firing now would undo the resolve
    firing.posted(0, 1, *step("resolved"))
    assert firing.to_repost() is None  # partition 2 still behind
    firing.posted(2, 0, *step("firing", run_id="run-b"))
    assert [alert["labels"]["run_id"] for alert in firing.to_repost()] == ["run-b"]


def test_a_revoked_partition_is_neither_re_posted_nor_waited_for():
    firing = FiringAlerts()
    firing.assigned(0)
    firing.assigned(1)
    firing.posted(0, 0, *step("firing"))
    firing.read_back(1, 5, 3, None, None)
    assert firing.to_repost() is None
    firing.revoked(1)
    assert len(firing.to_repost()) == 1
    firing.revoked(0)
    assert firing.to_repost() == []


def test_a_reassigned_partition_starts_afresh():
    firing = FiringAlerts()
    firing.assigned(0)
    firing.posted(0, 0, *step("firing"))
    firing.read_back(0, 4, 2, None, None)
    firing.assigned(0)
    assert firing.to_repost() == []


# ------------------------------------------------------------------------------------------ command line


@pytest.mark.parametrize("url", ["localhost:9093", "http://", "mailto:ops@example.com"])
def test_consume_watch_with_a_bad_alertmanager_url_is_one_line_and_exit_2(capsys, url):
    code = main(["consume", "watch", "--bootstrap-servers", "127.0.0.1:1", "--alertmanager", url])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "--alertmanager" in err and "Traceback" not in err


@pytest.mark.parametrize("group", ["validate", "drift"])
def test_alertmanager_with_another_group_is_a_usage_error(capsys, group):
    code = main(["consume", group, "--bootstrap-servers", "127.0.0.1:1", "--alertmanager", "http://127.0.0.1:9093"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and f"not consume {group}" in err
