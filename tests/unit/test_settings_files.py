"""Settings files of any content give a table or one clear line, never a traceback (issue 9).

Both TOML files a user hands the program go through `avro_schemas.toml_file.read_toml`: the `watch`
rules file (`load_rules`) and the Kafka settings file (`KafkaSettings.from_toml`). The properties feed
them random bytes, valid files mutated at random (bytes replaced, inserted, cut, and known-nasty
fragments spliced in), and generated TOML documents of any shape and value; whatever the content, the
loader returns or raises its own one-line error. The command line is checked on the cases from the
issue: exit 2 and one line on stderr.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avro_schemas.toml_file import MAX_TOML_BYTES, read_toml, show
from avro_schemas.errors import TelemetryError
from consumers.telemetry_watch import RulesConfig, RulesError, load_rules
from ppo_telemetry.kafka_settings import KafkaSettings, SettingsError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

VALID_RULES = b"""
[kl_spike]
factor = 8.0
hold = 2
severity = "critical"

[entropy_collapse]
enabled = false
ratio = 0.4
"""

VALID_KAFKA = b"""
[kafka]
bootstrap_servers = "broker-1:9092,broker-2:9092"
security_protocol = "SASL_SSL"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "trainer"
sasl_password = "s3cret-Pw"

[kafka.extra]
"linger.ms" = 20
"enable.idempotence" = true
"""

# Fragments that broke, or could break, a loader: invalid UTF-8, numbers past every limit, nesting past
# the recursion limit, NULs, non-finite floats, tables where values go, aliases and refused properties.
NASTY_FRAGMENTS = [
    b"\xff\xfe\x00",
    b"\xc3\x28",
    b"9" * 400,
    b"9" * 5000,
    b"0x" + b"f" * 5000,
    b"1e400",
    b"-1e400",
    b"nan",
    b"-inf",
    b"[" * 3000,
    b"{a = " * 1200,
    b"\x00",
    b"\r",
    b"\n[kafka]\n",
    b"\n[kafka.extra]\n",
    b"\n[[kafka]]\n",
    b'\n"plugin.library.paths" = "/tmp/evil"\n',
    b'\n"sasl.mechanisms" = "PLAIN"\n',
    b'\n"metadata.broker.list" = ""\n',
    b"\nbootstrap_servers = \"\"\n",
    b"\nbootstrap_servers = \"h:99999\"\n",
    b'\n"error_cb" = "x"\n',
    b"\nfactor = {x = [1, {y = 2}]}\n",
    b"\nhold = " + b"9" * 400 + b"\n",
    b"\nratio = " + b"9" * 400 + b"\n",
    b"\n1979-05-27T07:32:00Z\n",
    b"= 1979-05-27T07:32:00Z",
    b'"\\u0000"',
    b"\xef\xbb\xbf",
]


@pytest.fixture
def settings_file(tmp_path: Path):
    """Factory: write bytes to a fresh file and return its path."""
    counter = iter(range(1_000_000))

    def write(content: bytes) -> Path:
        path = tmp_path / f"settings-{next(counter)}.toml"
        path.write_bytes(content)
        return path

    return write


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Kafka settings read only the files of these tests."""
    for name in list(os.environ):
        if name.upper().startswith("PPO_TELEMETRY_KAFKA_") or name.upper() == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(name)


def load_both(path: Path) -> None:
    """Load `path` as a rules file and as a Kafka settings file; each returns or raises its own error,
    always one line."""
    for loader, error in ((load_rules, RulesError), (KafkaSettings.from_toml, SettingsError)):
        try:
            loader(path)
        except error as exc:
            message = str(exc)
            assert message and "\n" not in message and "\r" not in message, message
            assert len(message) < 2000, message[:200]


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """`valid` with a few random edits: bytes replaced, inserted or cut, or a nasty fragment spliced in."""
    content = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(content)))
        edit = draw(st.sampled_from(["replace", "insert", "cut", "splice"]))
        if edit == "replace" and position < len(content):
            content[position] = draw(st.integers(0, 255))
        elif edit == "insert":
            content[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "cut":
            del content[position : position + draw(st.integers(1, 40))]
        else:
            content[position:position] = draw(st.sampled_from(NASTY_FRAGMENTS))
    return bytes(content)


def toml_value(value: Any) -> str:
    """`value` written as an inline TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return '"' + "".join(_toml_char(char) for char in value) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return "{" + ", ".join(f"{toml_key(key)} = {toml_value(item)}" for key, item in value.items()) + "}"


def _toml_char(char: str) -> str:
    return f"\\u{ord(char):04x}" if char in '"\\' or ord(char) < 0x20 or ord(char) == 0x7F else char


def toml_key(key: str) -> str:
    """`key` as a quoted TOML key."""
    return toml_value(key)


scalars = (
    st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["PLAINTEXT", "SASL_SSL", "PLAIN", "127.0.0.1:9092", "", "h:0", "critical"])
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3), max_leaves=12)
key_names = st.sampled_from(
    ["bootstrap_servers", "security_protocol", "sasl_mechanism", "sasl_password", "client_id", "extra",
     "kl_spike", "hold", "factor", "severity", "enabled", "linger.ms", "sasl.mechanisms", "plugin.library.paths"]
) | st.text(max_size=12)


@st.composite
def toml_documents(draw: st.DrawFn) -> bytes:
    """A TOML document of any shape: tables (the two files' own, or any) of keys with values of any type."""
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        table = draw(st.sampled_from(["kafka", "kafka.extra", "kl_spike", "entropy_collapse"]) | st.text(min_size=1, max_size=10))
        lines.append(f"[{table if table.replace('.', '').replace('_', '').isalnum() else toml_key(table)}]")
        keys = draw(st.lists(key_names, max_size=5, unique=True))
        lines += [f"{toml_key(key)} = {toml_value(draw(values))}" for key in keys]
    return "\n".join(lines).encode()


@FUZZ
@given(content=st.binary(max_size=3000))
def test_random_bytes_never_crash_either_loader(settings_file, content: bytes) -> None:
    load_both(settings_file(content))


@FUZZ
@given(content=mutated(VALID_RULES) | mutated(VALID_KAFKA))
def test_mutated_valid_files_never_crash_either_loader(settings_file, content: bytes) -> None:
    load_both(settings_file(content))


@FUZZ
@given(content=toml_documents())
def test_generated_toml_of_any_shape_never_crashes_either_loader(settings_file, content: bytes) -> None:
    load_both(settings_file(content))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"[kafka]\nclient_id = \"a\xffb\"\n", "not UTF-8 text (byte 0xff at offset 22)"),
        (b"[kafka]\nclient_id = " + b"9" * 5000 + b"\n", "a number too long to read"),
        (b"[kafka]\nx = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
        (b"[kafka\n", "invalid TOML in Kafka settings"),
        (b"\x00\x01\x02binary", "invalid TOML in Kafka settings"),
    ],
)
def test_read_toml_names_what_is_wrong_in_one_line(settings_file, content: bytes, expected: str) -> None:
    path = settings_file(content)
    with pytest.raises(SettingsError) as caught:
        read_toml(path, SettingsError, "Kafka settings")
    assert expected in str(caught.value) and str(path) in str(caught.value)


def test_a_byte_order_mark_is_accepted(settings_file) -> None:
    assert read_toml(settings_file(b"\xef\xbb\xbfa = 1\n"), SettingsError, "x") == {"a": 1}


def test_a_directory_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read rules file: Is a directory"):
        load_rules(tmp_path)


def test_an_endless_file_is_refused_past_the_size_limit() -> None:
    with pytest.raises(RulesError, match=f"larger than {MAX_TOML_BYTES // 1024} KiB"):
        load_rules("/dev/zero")


def test_a_file_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    # a path through a regular file cannot be opened, whoever runs the test (root reads a chmod-0 file)
    (tmp_path / "plain").write_bytes(b"")
    with pytest.raises(SettingsError, match="cannot read Kafka settings: Not a directory"):
        KafkaSettings.from_toml(tmp_path / "plain" / "kafka.toml")


def test_an_empty_rules_file_keeps_every_default(settings_file) -> None:
    assert load_rules(settings_file(b"")) == RulesConfig.default()


def test_an_empty_kafka_settings_file_is_an_error(settings_file) -> None:
    with pytest.raises(SettingsError, match=r"no \[kafka\] table"):
        KafkaSettings.from_toml(settings_file(b""))


def test_a_huge_integer_in_a_rules_range_check_is_out_of_range_not_a_crash(settings_file) -> None:
    path = settings_file(b"[kl_spike]\nfactor = " + b"9" * 400 + b"\n")
    with pytest.raises(RulesError, match=r"key 'factor' must be > 1, got 9{10,40}\.\.\.") as caught:
        load_rules(path)
    assert len(str(caught.value)) < 300


def test_a_path_with_a_newline_stays_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad\nname.toml"
    path.write_bytes(b"\xff")
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    assert "\n" not in str(caught.value)


def test_show_is_short_and_safe_on_deep_and_huge_values() -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    assert len(show(deep)) < 80 and len(show(10**399)) < 80
    assert len(show("x" * 100_000)) < 80


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("PPO_TELEMETRY_KAFKA_")}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    return subprocess.run([sys.executable, "-m", "ppo_telemetry", *args], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.parametrize(
    "content",
    [b"[kafka]\nbootstrap_servers = \"a\xff:9092\"\n", b"[kafka.extra]\n\"linger.ms\" = " + b"9" * 5000 + b"\n",
     b"[kafka]\nclient_id = " + b"9" * 400 + b"\n", b"\x7fELF\x02\x01\x01\x00binary"],
)
def test_consume_with_a_malformed_kafka_file_is_one_line_and_exit_2(settings_file, content: bytes) -> None:
    proc = run_cli("consume", "validate", "--kafka-config", str(settings_file(content)))
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "content",
    [b"[kl_spike]\nfactor = 1\n#\xff\n", b"[kl_spike]\nfactor = " + b"9" * 400 + b"\n",
     b"[kl_spike]\nhold = " + b"[" * 3000 + b"\n", b"\x89PNG\r\n\x1a\n\x00\x00"],
)
def test_watch_with_a_malformed_rules_file_is_one_line_and_exit_2(settings_file, content: bytes) -> None:
    proc = run_cli("watch", os.devnull, "--rules", str(settings_file(content)))
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_every_settings_error_is_a_telemetry_error() -> None:
    assert issubclass(RulesError, TelemetryError) and issubclass(SettingsError, TelemetryError)


ENV_FIELDS = ["EXTRA", "BOOTSTRAP_SERVERS", "SECURITY_PROTOCOL", "SASL_MECHANISM", "SASL_PASSWORD", "CLIENT_ID"]
env_texts = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=60) | (
    st.integers(1, 5000).map(lambda depth: "[" * depth + "]" * depth)
) | st.sampled_from(['{"linger.ms": 1e999}', '{"plugin.library.paths": "x"}', '{"a": ' + "9" * 5000 + "}", "{}", "null",
                  "a\udcffb", '{"client.rack": "\\u0000"}'])


@FUZZ
@given(values=st.dictionaries(st.sampled_from(ENV_FIELDS), env_texts, max_size=3))
def test_environment_values_of_any_content_never_crash_the_settings(values: dict[str, str]) -> None:
    names = {f"PPO_TELEMETRY_KAFKA_{field}": value for field, value in values.items()}
    os.environ.update(names)
    try:
        KafkaSettings()
    except SettingsError as exc:
        assert "\n" not in str(exc)
    finally:
        for name in names:
            del os.environ[name]


@pytest.mark.parametrize(
    "args",
    [["watch", os.devnull, "--rules", ""], ["consume", "watch", "--kafka-config", ""],
     ["consume", "validate", "--kafka-config", os.devnull]],
    ids=["empty-rules-flag", "empty-kafka-config-flag", "kafka-config-without-kafka-table"],
)
def test_an_empty_or_empty_file_flag_is_one_line_not_a_default(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from ppo_telemetry.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("ppo-telemetry: error: "), err
