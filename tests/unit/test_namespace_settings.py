"""Where a namespace comes from (flag > `PPO_TELEMETRY_NAMESPACE` > `[kafka] namespace` > none), what a bad one
prints, and what the runner and the demo name with it. No broker needed: nothing here connects."""

from __future__ import annotations

from pathlib import Path

import pytest

from avro_schemas.topics import DEFAULT_NAMESPACE, Namespace
from consumers.groups import DriftGroup, ValidatorGroup, WatchGroup
from consumers.drift import Baseline
from consumers.runner import TransactionalRunner
from ppo_telemetry.cli import _kafka_settings, _namespace, main
from ppo_telemetry.demo import demo_namespace, synthetic_run
from ppo_telemetry.kafka_settings import KafkaSettings, SettingsError


@pytest.fixture(autouse=True)
def _no_namespace_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PPO_TELEMETRY_NAMESPACE", raising=False)


def _settings_file(tmp_path: Path, namespace: str | None) -> str:
    path = tmp_path / "kafka.toml"
    path.write_text('[kafka]\nbootstrap_servers = "127.0.0.1:9092"\n'
                    + (f'namespace = "{namespace}"\n' if namespace is not None else ""))
    return str(path)


def _resolve(flag: str | None, config_file: str | None) -> Namespace:
    return _namespace(flag, _kafka_settings(None, config_file))


def test_without_a_flag_variable_or_file_key_the_namespace_is_the_default(tmp_path):
    assert _resolve(None, None) == DEFAULT_NAMESPACE
    assert _resolve(None, _settings_file(tmp_path, None)) == DEFAULT_NAMESPACE


def test_the_flag_wins_over_the_environment_which_wins_over_the_file(tmp_path, monkeypatch):
    config_file = _settings_file(tmp_path, "from-file")
    assert _resolve(None, config_file).name == "from-file"
    monkeypatch.setenv("PPO_TELEMETRY_NAMESPACE", "from-env")
    assert _resolve(None, config_file).name == "from-env"
    assert _resolve(None, None).name == "from-env"
    assert _resolve("from-flag", config_file).name == "from-flag"
    # an empty flag is the default namespace, chosen explicitly over the environment and the file
    assert _resolve("", config_file) == DEFAULT_NAMESPACE


def test_the_namespace_is_not_a_librdkafka_option(monkeypatch):
    monkeypatch.setenv("PPO_TELEMETRY_NAMESPACE", "team-a")
    settings = KafkaSettings()
    assert settings.namespace == "team-a"
    assert "namespace" not in settings.librdkafka_config()


@pytest.mark.parametrize("source", ["keyword", "environment", "file"])
def test_a_bad_namespace_from_any_settings_source_is_one_settings_error(source, tmp_path, monkeypatch):
    if source == "keyword":
        make = lambda: KafkaSettings(namespace="team_a")  # noqa: E731
    elif source == "environment":
        monkeypatch.setenv("PPO_TELEMETRY_NAMESPACE", "team_a")
        make = KafkaSettings
    else:
        config_file = _settings_file(tmp_path, "team_a")
        make = lambda: KafkaSettings.from_toml(config_file)  # noqa: E731
    with pytest.raises(SettingsError) as caught:
        make()
    assert "namespace" in str(caught.value) and "'_' is not allowed" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("argv", [
    ["consume", "validate", "--namespace", "team_a"],
    ["consume", "watch", "--namespace", "x" * 300],
    ["train", "--kafka", "127.0.0.1:9092", "--namespace", ".hidden"],
    ["demo", "--namespace", "a b"],
])
def test_a_bad_namespace_flag_is_one_line_and_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--namespace" in err and "namespace" in err


def test_a_bad_namespace_in_the_environment_stops_consume_before_it_connects(monkeypatch, capsys):
    monkeypatch.setenv("PPO_TELEMETRY_NAMESPACE", "no spaces please")
    assert main(["consume", "validate", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "namespace" in err


def test_a_bad_namespace_in_the_settings_file_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["consume", "validate", "--kafka-config", _settings_file(tmp_path, "a_b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "namespace" in err


def test_train_without_kafka_takes_no_namespace(tmp_path, capsys):
    assert main(["train", "--ndjson-dir", str(tmp_path), "--namespace", "team-a"]) == 2
    assert "needs --kafka" in capsys.readouterr().err


def test_the_runner_names_group_topics_and_transactional_id_in_its_namespace():
    namespace = Namespace("team-a")
    baseline = Baseline.from_records(synthetic_run("base", 8, seed=1, unstable=False))
    for core in (ValidatorGroup(), DriftGroup(baseline), WatchGroup()):
        runner = TransactionalRunner({"bootstrap.servers": "127.0.0.1:1"}, core, instance_id="i", namespace=namespace)
        assert runner.group_id == f"team-a.{core.group}"
        assert runner.input_topic == "team-a.ppo.telemetry.epochs"
        default = TransactionalRunner({"bootstrap.servers": "127.0.0.1:1"}, core)
        assert (default.group_id, default.input_topic) == (core.group, "ppo.telemetry.epochs")


def test_each_demo_gets_a_fresh_namespace_inside_the_configured_one():
    first, second = demo_namespace(DEFAULT_NAMESPACE, "20261202T000000"), demo_namespace(DEFAULT_NAMESPACE, "20261202T000000")
    assert first != second  # same second, still apart
    assert first.name.startswith("demo-20261202T000000-")
    assert not {*first.groups, *first.topics} & {*DEFAULT_NAMESPACE.groups, *DEFAULT_NAMESPACE.topics}
    inside = demo_namespace(Namespace("team-a"), "t")
    assert inside.name.startswith("team-a.demo-t-")
