"""`ppo_telemetry.kafka_settings`: where values come from, the librdkafka dict, validation, and secrets."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from avro_schemas.errors import TelemetryError
from ppo_telemetry.kafka_settings import (
    LIBRDKAFKA_ALIASES,
    REFUSED_PROPERTIES,
    KafkaSettings,
    SettingsError,
    canonical_key,
    check_bootstrap_servers,
    is_secret_key,
    redact_config,
    scrub,
)

PASSWORD = "hunter2-s3cret"
KEY_PASSWORD = "k3y-pass-phrase"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees only the Kafka variables it sets itself."""
    for name in list(os.environ):
        if name.upper().startswith("PPO_TELEMETRY_KAFKA_") or name.upper() == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(name)


@pytest.fixture
def write_toml(tmp_path: Path):
    """Factory: write TOML text to a fresh file and return its path."""

    def write(text: str) -> Path:
        path = tmp_path / "kafka.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def set_kafka_env(monkeypatch: pytest.MonkeyPatch, **fields: str) -> None:
    """Set `PPO_TELEMETRY_KAFKA_<FIELD>` for each keyword."""
    for name, value in fields.items():
        monkeypatch.setenv(f"PPO_TELEMETRY_KAFKA_{name.upper()}", value)


def assert_one_line_without_secrets(exc: BaseException, *secrets: str) -> str:
    """The message of `exc`, asserted to be one line that contains none of `secrets`."""
    message = str(exc)
    assert "\n" not in message
    for secret in secrets:
        assert secret not in message
    return message


def test_defaults_give_the_local_broker_config() -> None:
    assert KafkaSettings().librdkafka_config() == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "PLAINTEXT",
        "client.id": "ppo-telemetry",
    }


def test_env_vars_with_prefix_map_to_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    set_kafka_env(
        monkeypatch,
        bootstrap_servers="broker-1:9093,broker-2:9093",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="trainer",
        sasl_password=PASSWORD,
        client_id="ppo-run-7",
    )

    settings = KafkaSettings()

    assert settings.bootstrap_servers == "broker-1:9093,broker-2:9093"
    assert settings.security_protocol == "SASL_PLAINTEXT"
    assert settings.sasl_mechanism == "PLAIN"
    assert settings.sasl_username == "trainer"
    assert settings.sasl_password is not None and settings.sasl_password.get_secret_value() == PASSWORD
    assert settings.client_id == "ppo-run-7"


def test_env_extra_is_a_json_object_of_librdkafka_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PPO_TELEMETRY_KAFKA_EXTRA", '{"linger.ms": 5, "enable.idempotence": true}')

    config = KafkaSettings().librdkafka_config()

    assert config["linger.ms"] == "5"
    assert config["enable.idempotence"] == "true"


def test_conventional_kafka_bootstrap_servers_env_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "conventional:9092")

    assert KafkaSettings().bootstrap_servers == "conventional:9092"


def test_prefixed_bootstrap_servers_env_wins_over_conventional(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "conventional:9092")
    monkeypatch.setenv("PPO_TELEMETRY_KAFKA_BOOTSTRAP_SERVERS", "prefixed:9092")

    assert KafkaSettings().bootstrap_servers == "prefixed:9092"


def test_keyword_arguments_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "conventional:9092")
    monkeypatch.setenv("PPO_TELEMETRY_KAFKA_CLIENT_ID", "from-env")

    settings = KafkaSettings(bootstrap_servers="flag:9092", client_id="from-flag")

    assert settings.bootstrap_servers == "flag:9092"
    assert settings.client_id == "from-flag"


def test_toml_kafka_table_is_loaded(write_toml) -> None:
    path = write_toml(
        """
        [kafka]
        bootstrap_servers = "file-broker:9092"
        client_id = "from-file"

        [kafka.extra]
        "linger.ms" = 20
        "compression.type" = "zstd"

        [rules.kl_spike]
        threshold = 0.03
        """
    )

    settings = KafkaSettings.from_toml(path)

    assert settings.librdkafka_config() == {
        "bootstrap.servers": "file-broker:9092",
        "security.protocol": "PLAINTEXT",
        "client.id": "from-file",
        "linger.ms": "20",
        "compression.type": "zstd",
    }


def test_env_overrides_toml_file(write_toml, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_toml(
        """
        [kafka]
        bootstrap_servers = "file-broker:9092"
        client_id = "from-file"
        security_protocol = "SSL"
        """
    )
    monkeypatch.setenv("PPO_TELEMETRY_KAFKA_CLIENT_ID", "from-env")

    settings = KafkaSettings.from_toml(path)

    assert settings.client_id == "from-env"
    assert settings.bootstrap_servers == "file-broker:9092"
    assert settings.security_protocol == "SSL"


def test_conventional_bootstrap_env_overrides_toml_file(write_toml, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_toml('[kafka]\nbootstrap_servers = "file-broker:9092"\n')
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "conventional:9092")

    assert KafkaSettings.from_toml(path).bootstrap_servers == "conventional:9092"


def test_toml_overrides_win_over_env_and_file(write_toml, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_toml('[kafka]\nbootstrap_servers = "file-broker:9092"\n')
    monkeypatch.setenv("PPO_TELEMETRY_KAFKA_BOOTSTRAP_SERVERS", "env-broker:9092")

    settings = KafkaSettings.from_toml(path, bootstrap_servers="flag-broker:9092")

    assert settings.bootstrap_servers == "flag-broker:9092"


def test_toml_file_and_env_combine_across_the_sasl_check(write_toml, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_toml(
        """
        [kafka]
        security_protocol = "SASL_SSL"
        sasl_mechanism = "SCRAM-SHA-256"
        sasl_username = "trainer"
        """
    )
    monkeypatch.setenv("PPO_TELEMETRY_KAFKA_SASL_PASSWORD", PASSWORD)

    assert KafkaSettings.from_toml(path).librdkafka_config()["sasl.password"] == PASSWORD


def test_toml_table_does_not_leak_into_later_settings(write_toml) -> None:
    KafkaSettings.from_toml(write_toml('[kafka]\nclient_id = "from-file"\n'))

    assert KafkaSettings().client_id == "ppo-telemetry"


def test_unknown_toml_key_is_rejected_by_name(write_toml) -> None:
    path = write_toml('[kafka]\nbootstrap_servers = "b:9092"\nsasl_pasword = "typo"\n')

    with pytest.raises(SettingsError) as info:
        KafkaSettings.from_toml(path)

    message = assert_one_line_without_secrets(info.value, "typo")
    assert "'sasl_pasword'" in message
    assert str(path) in message


def test_dotted_toml_key_points_to_the_extra_table(write_toml) -> None:
    path = write_toml('[kafka]\n"linger.ms" = 5\n')

    with pytest.raises(SettingsError, match=r"'linger\.ms'.*\[kafka\.extra\]"):
        KafkaSettings.from_toml(path)


def test_toml_without_kafka_table_is_rejected(write_toml) -> None:
    with pytest.raises(SettingsError, match=r"no \[kafka\] table"):
        KafkaSettings.from_toml(write_toml('bootstrap_servers = "b:9092"\n'))


def test_invalid_toml_is_a_one_line_settings_error(write_toml) -> None:
    with pytest.raises(SettingsError, match="invalid TOML") as info:
        KafkaSettings.from_toml(write_toml("[kafka\nbootstrap_servers = \n"))

    assert_one_line_without_secrets(info.value)


def test_missing_toml_file_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        KafkaSettings.from_toml(tmp_path / "absent.toml")


def test_settings_error_is_a_telemetry_error() -> None:
    assert issubclass(SettingsError, TelemetryError)


def test_librdkafka_config_has_dotted_keys_and_revealed_secrets() -> None:
    settings = KafkaSettings(
        bootstrap_servers="b:9092",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="trainer",
        sasl_password=PASSWORD,
        extra={"sasl.oauthbearer.client.secret": "client-s3cret", "acks": "all"},
    )

    assert settings.librdkafka_config() == {
        "bootstrap.servers": "b:9092",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "trainer",
        "sasl.password": PASSWORD,
        "client.id": "ppo-telemetry",
        "sasl.oauthbearer.client.secret": "client-s3cret",
        "acks": "all",
    }


def test_scram_over_sasl_ssl_with_mutual_tls_config(monkeypatch: pytest.MonkeyPatch) -> None:
    set_kafka_env(
        monkeypatch,
        bootstrap_servers="kafka.example.com:9094",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="trainer",
        sasl_password=PASSWORD,
        ssl_ca_location="/etc/kafka/ca.pem",
        ssl_certificate_location="/etc/kafka/client.pem",
        ssl_key_location="/etc/kafka/client.key",
        ssl_key_password=KEY_PASSWORD,
        ssl_endpoint_identification_algorithm="https",
    )

    settings = KafkaSettings()

    assert settings.librdkafka_config() == {
        "bootstrap.servers": "kafka.example.com:9094",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "trainer",
        "sasl.password": PASSWORD,
        "ssl.ca.location": "/etc/kafka/ca.pem",
        "ssl.certificate.location": "/etc/kafka/client.pem",
        "ssl.key.location": "/etc/kafka/client.key",
        "ssl.key.password": KEY_PASSWORD,
        "ssl.endpoint.identification.algorithm": "https",
        "client.id": "ppo-telemetry",
    }
    assert PASSWORD not in repr(settings) and KEY_PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings) and KEY_PASSWORD not in str(settings)


def test_invalid_value_error_is_one_line_names_field_and_hides_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_kafka_env(
        monkeypatch,
        sasl_mechanism="PLAIN",
        sasl_username="trainer",
        sasl_password=PASSWORD,
        security_protocol="FOO",
    )

    with pytest.raises(SettingsError) as info:
        KafkaSettings()

    message = assert_one_line_without_secrets(info.value, PASSWORD, "FOO")
    assert "security_protocol" in message
    assert PASSWORD not in repr(info.value)


def test_invalid_value_in_toml_hides_password_from_file(write_toml) -> None:
    path = write_toml(
        f"""
        [kafka]
        security_protocol = "SASL_SSL"
        sasl_mechanism = "SCRAM-SHA-999"
        sasl_username = "trainer"
        sasl_password = "{PASSWORD}"
        """
    )

    with pytest.raises(SettingsError) as info:
        KafkaSettings.from_toml(path)

    message = assert_one_line_without_secrets(info.value, PASSWORD, "SCRAM-SHA-999")
    assert "sasl_mechanism" in message


def test_wrongly_typed_password_error_does_not_echo_it() -> None:
    with pytest.raises(SettingsError) as info:
        KafkaSettings(
            security_protocol="SASL_SSL",
            sasl_mechanism="PLAIN",
            sasl_username="trainer",
            sasl_password=["hunter2-s3cret"],
        )

    message = assert_one_line_without_secrets(info.value, PASSWORD)
    assert "sasl_password" in message


def test_valid_settings_repr_hides_password(monkeypatch: pytest.MonkeyPatch) -> None:
    set_kafka_env(
        monkeypatch,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="trainer",
        sasl_password=PASSWORD,
    )

    settings = KafkaSettings()

    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings)
    assert PASSWORD not in settings.model_dump_json()


def test_extra_secrets_are_hidden_from_repr() -> None:
    settings = KafkaSettings(
        extra={"sasl.oauthbearer.client.secret": "client-s3cret", "ssl.keystore.password": "store-pass"}
    )

    assert "client-s3cret" not in repr(settings)
    assert "store-pass" not in repr(settings)
    assert settings.librdkafka_config()["ssl.keystore.password"] == "store-pass"


def test_sasl_protocol_requires_mechanism() -> None:
    expected = "sasl_mechanism: required with security_protocol SASL_SSL"
    with pytest.raises(SettingsError, match=expected) as info:
        KafkaSettings(security_protocol="SASL_SSL")

    assert_one_line_without_secrets(info.value)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_password_mechanisms_require_username(mechanism: str) -> None:
    with pytest.raises(SettingsError, match="sasl_username: required") as info:
        KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism=mechanism, sasl_password=PASSWORD)

    assert_one_line_without_secrets(info.value, PASSWORD)


def test_password_mechanism_requires_password() -> None:
    with pytest.raises(SettingsError, match="sasl_password: required") as info:
        KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="trainer")

    assert_one_line_without_secrets(info.value)


def test_oauthbearer_needs_no_username_or_password() -> None:
    config = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER").librdkafka_config()

    assert config["sasl.mechanism"] == "OAUTHBEARER"
    assert "sasl.username" not in config and "sasl.password" not in config


def test_sasl_mechanism_without_sasl_protocol_is_rejected() -> None:
    with pytest.raises(SettingsError, match="sasl_mechanism: set, but security_protocol is PLAINTEXT"):
        KafkaSettings(sasl_mechanism="PLAIN", sasl_username="trainer", sasl_password=PASSWORD)


def test_ssl_key_without_certificate_is_rejected() -> None:
    expected = "ssl_key_location: set without ssl_certificate_location"
    with pytest.raises(SettingsError, match=expected) as info:
        KafkaSettings(security_protocol="SSL", ssl_key_location="/k.pem", ssl_key_password=KEY_PASSWORD)

    assert_one_line_without_secrets(info.value, KEY_PASSWORD)


def test_extra_cannot_shadow_a_typed_setting() -> None:
    expected = r"'sasl\.password' has its own setting; use sasl_password"
    with pytest.raises(SettingsError, match=expected) as info:
        KafkaSettings(extra={"sasl.password": PASSWORD})

    assert_one_line_without_secrets(info.value, PASSWORD)


def test_unknown_keyword_is_rejected_by_name() -> None:
    with pytest.raises(SettingsError, match="sasl_pasword: unknown setting"):
        KafkaSettings(sasl_pasword=PASSWORD)


def test_env_extra_that_is_not_json_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PPO_TELEMETRY_KAFKA_EXTRA", '{"ssl.keystore.password": "' + PASSWORD)

    with pytest.raises(SettingsError, match="extra") as info:
        KafkaSettings()

    assert_one_line_without_secrets(info.value, PASSWORD)


def test_redacted_hides_every_password() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="trainer",
        sasl_password=PASSWORD,
        ssl_certificate_location="/c.pem",
        ssl_key_location="/k.pem",
        ssl_key_password=KEY_PASSWORD,
        extra={"sasl.oauthbearer.client.secret": "client-s3cret"},
    )

    redacted = settings.redacted()

    assert redacted["sasl.password"] == "***"
    assert redacted["ssl.key.password"] == "***"
    assert redacted["sasl.oauthbearer.client.secret"] == "***"
    assert redacted["sasl.username"] == "trainer"
    assert redacted.keys() == settings.librdkafka_config().keys()
    for secret in (PASSWORD, KEY_PASSWORD, "client-s3cret"):
        assert secret not in str(redacted)


def test_redact_config_masks_secret_keys_only() -> None:
    config = {
        "bootstrap.servers": "b:9092",
        "sasl.password": PASSWORD,
        "ssl.keystore.password": "store-pass",
        "sasl.oauthbearer.client.secret": "client-s3cret",
        "sasl.oauthbearer.config": "principal=admin token=abc",
        "ssl.key.pem": "-----BEGIN PRIVATE KEY-----",
        "sasl.username": "trainer",
    }

    assert redact_config(config) == {
        "bootstrap.servers": "b:9092",
        "sasl.password": "***",
        "ssl.keystore.password": "***",
        "sasl.oauthbearer.client.secret": "***",
        "sasl.oauthbearer.config": "***",
        "ssl.key.pem": "***",
        "sasl.username": "trainer",
    }


def test_scrub_removes_password_embedded_in_error_message() -> None:
    config = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="trainer",
        sasl_password=PASSWORD,
    ).librdkafka_config()
    error = f"KafkaError{{code=_AUTHENTICATION,val=-169,str=\"SASL PLAIN failed for trainer:{PASSWORD}\"}}"

    scrubbed = scrub(error, config)

    assert PASSWORD not in scrubbed
    assert scrubbed == 'KafkaError{code=_AUTHENTICATION,val=-169,str="SASL PLAIN failed for trainer:***"}'


def test_scrub_replaces_the_longer_of_overlapping_secrets_whole() -> None:
    config = {"sasl.password": "ab-1", "ssl.key.password": "ab-1-def", "client.id": "ab-1"}

    assert scrub("x ab-1-def y ab-1", config) == "x *** y ***"


def test_scrub_leaves_text_without_secrets_alone() -> None:
    assert scrub("Broker transport failure", {"sasl.password": "", "client.id": "ppo"}) == (
        "Broker transport failure"
    )


def test_extra_value_of_wrong_type_is_named_by_key() -> None:
    with pytest.raises(SettingsError, match=r"^invalid Kafka settings: extra: the value of 'acks' must be"):
        KafkaSettings(extra={"acks": ["all"]})


# --- secrets scrubbed as whole values (issue 9) ------------------------------------------------------


def test_a_one_letter_password_garbles_no_message() -> None:
    config = {"sasl.password": "a"}
    message = "sasl_plaintext://127.0.0.1:9092/bootstrap: Broker transport failure: a broker at a host"

    assert scrub(message, config) == message


@pytest.mark.parametrize("password", ["a", "broker", "1234"])
def test_a_plain_word_or_number_password_is_scrubbed_where_written_as_a_value(password: str) -> None:
    config = {"sasl.password": password}

    assert scrub(f'password="{password}" user:{password} key=\'{password}\'', config) == (
        'password="***" user:*** key=\'***\''
    )
    assert scrub(f"the {password}s of {password}x", config) == f"the {password}s of {password}x"


def test_a_password_is_scrubbed_as_a_whole_token_never_inside_another() -> None:
    config = {"sasl.password": PASSWORD}

    assert scrub(f"failed {PASSWORD} (user:{PASSWORD}@host)", config) == "failed *** (user:***@host)"
    assert scrub(f"x{PASSWORD} {PASSWORD}y", config) == f"x{PASSWORD} {PASSWORD}y"


def test_a_message_that_is_only_the_secret_is_scrubbed() -> None:
    assert scrub("a", {"sasl.password": "a"}) == "***"


@pytest.mark.parametrize(
    "key",
    ["ssl.keystore.password", "sasl.oauthbearer.client.secret", "sasl.oauthbearer.assertion.private.key.passphrase",
     "sasl.oauthbearer.assertion.private.key.pem", "ssl.key.pem", "sasl.oauthbearer.config"],
)
def test_credential_keys_of_librdkafka_are_secret(key: str) -> None:
    assert is_secret_key(key)
    settings = KafkaSettings(extra={key: PASSWORD})
    assert PASSWORD not in repr(settings) and settings.redacted()[key] == "***"


# --- properties that load code or run commands (issue 9) ---------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["plugin.library.paths", "ssl.engine.location", "ssl.providers", "sasl.kerberos.kinit.cmd",
     "sasl.kerberos.keytab", "sasl.kerberos.principal", "internal.termination.signal"],
)
def test_properties_that_load_code_or_run_commands_are_refused(key: str, write_toml) -> None:
    path = write_toml(f'[kafka.extra]\n"{key}" = "/tmp/libevil"\n')

    with pytest.raises(SettingsError, match=rf"'{re.escape(key)}' is refused: it ") as info:
        KafkaSettings.from_toml(path)

    assert_one_line_without_secrets(info.value)


def test_every_documented_code_loading_property_is_in_the_refused_list() -> None:
    # librdkafka CONFIGURATION.md: the properties whose value is a library to dlopen or a command to run
    assert {"plugin.library.paths", "ssl.engine.location", "ssl.providers", "sasl.kerberos.kinit.cmd"} <= set(
        REFUSED_PROPERTIES
    )


@pytest.mark.parametrize("key", ["error_cb", "stats_cb", "oauth_cb", "logger", "on_delivery", "default.topic.config"])
def test_the_clients_callbacks_and_python_objects_are_refused(key: str) -> None:
    with pytest.raises(SettingsError, match="is refused"):
        KafkaSettings(extra={key: "x"})


def test_refused_properties_are_refused_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PPO_TELEMETRY_KAFKA_EXTRA", '{"plugin.library.paths": "/tmp/libevil"}')

    with pytest.raises(SettingsError, match="'plugin.library.paths' is refused"):
        KafkaSettings()


@pytest.mark.parametrize("key", ["Plugin.Library.Paths", " linger.ms", "linger.ms ", "a..b", "", "linger-ms"])
def test_keys_that_are_not_librdkafka_property_names_are_refused(key: str) -> None:
    with pytest.raises(SettingsError, match="is not a librdkafka property name"):
        KafkaSettings(extra={key: "1"})


@pytest.mark.parametrize("number", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_numbers_in_extra_are_refused(number: float) -> None:
    with pytest.raises(SettingsError, match="must be a finite number"):
        KafkaSettings(extra={"linger.ms": number})


# --- alias keys normalised before the checks (issue 9) -----------------------------------------------


@pytest.mark.parametrize(
    ("alias", "field"), [("sasl.mechanisms", "sasl_mechanism"), ("metadata.broker.list", "bootstrap_servers")]
)
def test_an_alias_of_a_typed_setting_cannot_bypass_its_checks(alias: str, field: str, write_toml) -> None:
    path = write_toml(f'[kafka]\nsecurity_protocol = "PLAINTEXT"\n[kafka.extra]\n"{alias}" = "PLAIN"\n')

    with pytest.raises(SettingsError, match=rf"'{re.escape(alias)}' \(an alias of .*\) has its own setting; use {field}"):
        KafkaSettings.from_toml(path)


def test_one_property_under_two_names_is_an_error() -> None:
    with pytest.raises(SettingsError, match="'linger.ms' and 'queue.buffering.max.ms' name the same librdkafka property"):
        KafkaSettings(extra={"linger.ms": 5, "queue.buffering.max.ms": 7})


def test_an_alias_is_passed_to_librdkafka_under_its_canonical_name() -> None:
    config = KafkaSettings(extra={"queue.buffering.max.ms": 7, "request.required.acks": "all"}).librdkafka_config()

    assert config["linger.ms"] == "7" and config["acks"] == "all"
    assert "queue.buffering.max.ms" not in config and "request.required.acks" not in config


def test_an_alias_of_a_secret_key_is_hidden_too() -> None:
    settings = KafkaSettings(extra={"sasl.oauthbearer.client.credentials.client.secret": PASSWORD})

    assert PASSWORD not in repr(settings)
    assert settings.librdkafka_config()["sasl.oauthbearer.client.secret"] == PASSWORD


def test_every_alias_maps_to_a_name_that_is_not_itself_an_alias() -> None:
    assert not set(LIBRDKAFKA_ALIASES.values()) & set(LIBRDKAFKA_ALIASES)
    assert canonical_key("sasl.mechanisms") == "sasl.mechanism" and canonical_key("linger.ms") == "linger.ms"


# --- bootstrap servers (issue 9) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("broker", "is not host:port (no port)"),
        ("broker:", "is not host:port"),
        ("broker:x", "is not host:port"),
        ("broker:0", "the port must be 1-65535"),
        ("broker:65536", "the port must be 1-65535"),
        ("broker:123456", "is not host:port"),
        ("a:9092,,b:9092", "entry 2 of 3 is empty"),
        ("a:9092,", "entry 2 of 2 is empty"),
        ("PLAINTEXT://a:9092", "is not host:port"),
        ("::1:9092", "is not host:port"),
        ("a b:9092", "is not host:port"),
    ],
)
def test_a_bad_bootstrap_list_is_one_line_naming_the_entry(value: str, expected: str) -> None:
    with pytest.raises(SettingsError, match=r"^invalid Kafka settings: bootstrap_servers: ") as info:
        KafkaSettings(bootstrap_servers=value)

    assert expected in str(info.value)
    assert_one_line_without_secrets(info.value)


@pytest.mark.parametrize("value", ["127.0.0.1:1", "broker-1.example.com:65535", "[::1]:9092", "a:9092, b_2:9093"])
def test_good_bootstrap_lists_are_accepted_and_spaces_dropped(value: str) -> None:
    assert KafkaSettings(bootstrap_servers=value).bootstrap_servers == value.replace(" ", "")


def test_check_bootstrap_servers_is_the_same_check(value: str = "h:70000") -> None:
    with pytest.raises(ValueError, match="the port must be 1-65535"):
        check_bootstrap_servers(value)


def test_an_empty_bootstrap_from_the_environment_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "")

    with pytest.raises(SettingsError, match="bootstrap_servers: is empty"):
        KafkaSettings()


def test_a_bad_port_in_the_settings_file_is_an_error(write_toml) -> None:
    with pytest.raises(SettingsError, match="the port must be 1-65535"):
        KafkaSettings.from_toml(write_toml('[kafka]\nbootstrap_servers = "b:0"\n'))


@pytest.mark.parametrize(
    "args",
    [
        ["consume", "validate", "--bootstrap-servers", ""],
        ["consume", "watch", "--bootstrap-servers", "broker:99999"],
        ["train", "--kafka", "", "--ndjson-dir", "unused"],
        ["train", "--kafka", "broker", "--ndjson-dir", "unused"],
    ],
)
def test_an_empty_or_bad_bootstrap_flag_is_a_usage_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from ppo_telemetry.cli import main

    assert main(args) == 2

    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "bootstrap_servers" in err, err


def test_an_environment_value_that_is_not_utf8_is_one_line_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PPO_TELEMETRY_KAFKA_CLIENT_ID", "a\udcffb")  # how Python reads the byte 0xff

    with pytest.raises(SettingsError, match="client_id: is not valid UTF-8 text"):
        KafkaSettings()


def test_a_nul_character_in_a_value_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"extra\['client.rack'\]: contains a NUL character"):
        KafkaSettings(extra={"client.rack": "rack\x001"})


def test_an_environment_value_nested_too_deeply_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PPO_TELEMETRY_KAFKA_EXTRA", "[" * 20_000 + "]" * 20_000)

    with pytest.raises(SettingsError, match="nested too deeply"):
        KafkaSettings()


@pytest.mark.parametrize(
    ("name", "hint"),
    [("PPO_TELEMETRY_KAFKA_LINGER_MS", "PPO_TELEMETRY_KAFKA_EXTRA, a JSON object"),
     ("PPO_TELEMETRY_KAFKA_SASL_PASWORD", "known: "),
     ("PPO_TELEMETRY_KAFKA_NAMESPACE", "the namespace is PPO_TELEMETRY_NAMESPACE")],
)
def test_an_unknown_prefixed_environment_variable_is_named_not_ignored(
    name: str, hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, PASSWORD)

    with pytest.raises(SettingsError, match=f"unknown environment variable '{name}'") as info:
        KafkaSettings()

    assert hint in str(info.value)
    assert_one_line_without_secrets(info.value, PASSWORD)
