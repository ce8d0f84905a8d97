"""Kafka connection settings shared by the producer and the consumers (SPEC §4, §7).

The producer's Kafka sink and the consumer runners take plain librdkafka config dicts; this module is
where the CLI builds them. `KafkaSettings` names each option the Python way (`sasl_username`) and maps
it to its librdkafka key (`sasl.username`); passwords are `SecretStr`, so neither `repr` nor a log line
shows them. Any other librdkafka key goes through `extra` unchanged.

Where a value comes from, highest precedence first:

1. keyword arguments (`KafkaSettings(bootstrap_servers=...)`, or the overrides of `from_toml`);
2. environment variables `PPO_TELEMETRY_KAFKA_<FIELD>` (e.g. `PPO_TELEMETRY_KAFKA_SASL_PASSWORD`);
   `bootstrap_servers` also reads the conventional `KAFKA_BOOTSTRAP_SERVERS`, after the prefixed name;
   `extra` is read as a JSON object;
3. the `[kafka]` table of the TOML file given to `from_toml` (Python names; `[kafka.extra]` for others);
4. the defaults below.

Every problem is a one-line `SettingsError` that names the field and never shows a secret value.

What settings may not do (issue 9; docs/design.md, "Settings files and Kafka settings"):

- a file of any content gives a table or one line (`avro_schemas.toml_file.read_toml`);
- `extra` keys are librdkafka property names; an alias (`sasl.mechanisms`, `metadata.broker.list`,
  `linger.ms`/`queue.buffering.max.ms` ...) is renamed to one canonical name *before* any check, so
  an alias cannot slip past a check made on the other name, and one property given under two names
  is an error;
- properties that load code or run a command (`plugin.library.paths`, `ssl.engine.location`,
  `ssl.providers`, `sasl.kerberos.kinit.cmd` and the keys spliced into it) and the client's own
  callbacks are refused: a settings file is data, not a program;
- `bootstrap_servers` is a non-empty `host:port` list with ports 1-65535, whichever source gave it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal

import pydantic_settings
from pydantic import (
    AliasChoices,
    AliasGenerator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from avro_schemas.errors import TelemetryError
from avro_schemas.topics import Namespace, NamespaceError, check_namespace_name
from avro_schemas.toml_file import display_path, read_toml, show

__all__ = [
    "ENV_PREFIX",
    "REDACTED",
    "SecurityProtocol",
    "SaslMechanism",
    "SettingsError",
    "KafkaSettings",
    "LIBRDKAFKA_ALIASES",
    "REFUSED_PROPERTIES",
    "canonical_key",
    "check_bootstrap_servers",
    "is_secret_key",
    "namespace_of",
    "redact_config",
    "scrub",
]

ENV_PREFIX = "PPO_TELEMETRY_KAFKA_"
"""Prefix of the environment variables `KafkaSettings` reads (`PPO_TELEMETRY_KAFKA_BOOTSTRAP_SERVERS`)."""

REDACTED = "***"
"""What `redact_config`, `KafkaSettings.redacted` and `scrub` put in place of a secret value."""

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
"""The librdkafka `security.protocol` values."""

SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
"""The librdkafka `sasl.mechanism` values this project supports."""

# Substrings of librdkafka keys whose values are credentials: every `*password*`, `*passphrase*` and
# `*secret*` key, the OAUTHBEARER unsecured-token config (it can carry a token) and inline PEM private
# keys (`ssl.key.pem`, `sasl.oauthbearer.assertion.private.key.pem`).
_SECRET_KEY_MARKERS = ("password", "passphrase", "secret", "sasl.oauthbearer.config", "key.pem")

LIBRDKAFKA_ALIASES: Mapping[str, str] = {
    # alias -> the name used here: the Kafka (Java client) name where librdkafka knows one, else
    # librdkafka's own primary name. From librdkafka's CONFIGURATION.md ("Alias for ..."), v2.x.
    "metadata.broker.list": "bootstrap.servers",
    "sasl.mechanisms": "sasl.mechanism",
    "queue.buffering.max.ms": "linger.ms",
    "message.send.max.retries": "retries",
    "compression.codec": "compression.type",
    "fetch.message.max.bytes": "max.partition.fetch.bytes",
    "max.in.flight": "max.in.flight.requests.per.connection",
    "request.required.acks": "acks",
    "message.timeout.ms": "delivery.timeout.ms",
    "sasl.oauthbearer.client.credentials.client.id": "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.client.credentials.client.secret": "sasl.oauthbearer.client.secret",
}
"""librdkafka property aliases and the one name each pair is checked and passed under."""

REFUSED_PROPERTIES: Mapping[str, str] = {
    # librdkafka properties that load code into the process or run a command (CONFIGURATION.md):
    "plugin.library.paths": "it loads shared libraries (librdkafka plugins) into the process",
    "ssl.engine.location": "it loads an OpenSSL engine library into the process",
    "ssl.providers": "it loads OpenSSL provider modules (shared libraries) into the process",
    "sasl.kerberos.kinit.cmd": "it is a shell command librdkafka runs",
    "sasl.kerberos.keytab": "it is spliced into the kinit shell command librdkafka runs",
    "sasl.kerberos.principal": "it is spliced into the kinit shell command librdkafka runs",
    # not code, but it takes a process signal over from the consumers' own SIGTERM/SIGINT handling
    "internal.termination.signal": "it installs a handler for a process signal",
    # confluent-kafka's Python-object settings: the program's, and a string there is a crash, not a setting
    "default.topic.config": "it is a Python-object setting of the client, set by the program",
    "logger": "it is a Python-object setting of the client, set by the program",
    "on_delivery": "it is a Python-object setting of the client, set by the program",
    "on_commit": "it is a Python-object setting of the client, set by the program",
    "opaque": "it is set through librdkafka's API by the program",
    "interceptors": "it is set through librdkafka's API by the program",
}
"""librdkafka properties a settings source may not set, and why: a settings file is data, not a program."""

# librdkafka property names: lower-case words of letters and digits joined by '.' (or '_' in a few).
_PROPERTY_NAME = re.compile(r"[a-z0-9]+(?:[._][a-z0-9]+)*")
# one bootstrap entry: a host name or IPv4 address, or an IPv6 address in brackets; then a port
_BOOTSTRAP_ENTRY = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?):(?P<port>[0-9]{1,5})")

_SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
_CREDENTIAL_MECHANISMS = frozenset({"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"})

# The `[kafka]` table of the file `from_toml` is reading; a context variable rather than a class
# attribute so that two threads loading different files do not see each other's table.
_toml_values: ContextVar[Mapping[str, Any] | None] = ContextVar("_toml_values", default=None)


class SettingsError(TelemetryError):
    """Kafka settings that cannot be used: an unknown key, a bad value, or options that contradict each other.

    The message is one line, names the field, and never contains a secret value.
    """


def is_secret_key(key: str) -> bool:
    """Whether the librdkafka config `key` holds a credential (its name contains `password`, `secret`,
    `sasl.oauthbearer.config` or `ssl.key.pem`, in any case)."""
    lowered = key.lower()
    return any(marker in lowered for marker in _SECRET_KEY_MARKERS)


def canonical_key(key: str) -> str:
    """The name a librdkafka property is checked and passed under: `key` itself, or for an alias the
    other name of its pair (`sasl.mechanisms` -> `sasl.mechanism`; see `LIBRDKAFKA_ALIASES`)."""
    return LIBRDKAFKA_ALIASES.get(key, key)


def check_bootstrap_servers(value: str) -> str:
    """`value` as a clean `host:port[,host:port...]` list (spaces around entries dropped); raises
    `ValueError` naming the entry when it is empty, lacks a port, has a port outside 1-65535, or is
    not a host name, an IPv4 address or a bracketed IPv6 address followed by `:port`."""
    if not value.strip():
        raise ValueError("is empty; expected host:port[,host:port...]")
    entries = [entry.strip() for entry in value.split(",")]
    for position, entry in enumerate(entries, start=1):
        where = f"entry {position} of {len(entries)}" if len(entries) > 1 else "the address"
        if not entry:
            raise ValueError(f"{where} is empty (a stray comma?); expected host:port[,host:port...]")
        match = _BOOTSTRAP_ENTRY.fullmatch(entry)
        if match is None:
            hint = " (no port)" if ":" not in entry else ""
            raise ValueError(f"{where}, {show(entry)}, is not host:port{hint}")
        if not 1 <= int(match["port"]) <= 65535:
            raise ValueError(f"{where}, {show(entry)}: the port must be 1-65535")
    return ",".join(entries)


def redact_config(config: Mapping[str, str]) -> dict[str, str]:
    """A copy of a librdkafka config dict with every secret value (see `is_secret_key`) replaced by
    `"***"`, safe to log."""
    return {key: REDACTED if is_secret_key(key) else value for key, value in config.items()}


def scrub(text: str, config: Mapping[str, str]) -> str:
    """`text` with every secret value of `config` that stands in it as a whole value replaced by `"***"`.

    Meant for messages that may echo configuration back, such as librdkafka error strings: pass each
    one through this before printing or logging it (our own messages are built without secrets in the
    first place). Only whole values are replaced, never parts of words: a short password such as `a`
    must neither garble every message nor, by the gaps it leaves, hint at its value. A secret that is a
    plain word or number (letters only, digits only) could be any word of a message, so it is replaced
    only where it is written as a value: quoted, or right after `=` or `:`. Any other secret is replaced
    wherever it stands as a whole token, bounded by whitespace, quotes, `=:,;()[]{}<>@` or the ends of
    the text. Longer secrets are replaced first, so a secret that contains another is not left half
    visible.
    """
    secrets = {value for key, value in config.items() if is_secret_key(key) and value}
    for secret in sorted(secrets, key=len, reverse=True):
        if text == secret:
            return REDACTED
        text = _whole_value(secret).sub(REDACTED, text)
    return text


# What bounds a value written in a message: whitespace, quotes and the punctuation around values.
_VALUE_EDGE = r"""\s"'`=:,;()\[\]{}<>@"""


def _whole_value(secret: str) -> re.Pattern[str]:
    escaped = re.escape(secret)
    ends_here = f"(?![^{_VALUE_EDGE}])"
    if secret.isalpha() or secret.isdigit():
        quoted = f"(?<=[\"'`]){escaped}(?=[\"'`])"
        assigned = f"(?<=[=:]){escaped}{ends_here}"
        return re.compile(f"{quoted}|{assigned}")
    return re.compile(f"(?<![^{_VALUE_EDGE}]){escaped}{ends_here}")


def _librdkafka_key(field_name: str) -> str:
    # Every librdkafka key of the typed fields is its Python name with dots for underscores.
    return field_name.replace("_", ".")


def _reveal(value: str | SecretStr) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


class KafkaSettings(pydantic_settings.BaseSettings):
    """How to reach the Kafka cluster: librdkafka options under Python names, secrets as `SecretStr`.

    Values come from, highest precedence first: keyword arguments, the `PPO_TELEMETRY_KAFKA_*`
    environment (and `KAFKA_BOOTSTRAP_SERVERS`), the TOML file of `from_toml`, the defaults.
    `librdkafka_config()` is the dict for `confluent_kafka`; `redacted()` is the same for logs.
    Constructing one with a bad value raises `SettingsError` (not pydantic's `ValidationError`, whose
    message would repeat the input values, secrets included).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
        loc_by_alias=False,
        hide_input_in_errors=True,
        alias_generator=AliasGenerator(serialization_alias=_librdkafka_key),
    )

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices(f"{ENV_PREFIX}BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
    )
    """`bootstrap.servers`: comma-separated `host:port` list; by default the local `ppo-telemetry broker`."""

    security_protocol: SecurityProtocol = "PLAINTEXT"
    """`security.protocol`: `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`."""

    sasl_mechanism: SaslMechanism | None = None
    """`sasl.mechanism`: required by the `SASL_*` protocols, not allowed with the others."""

    sasl_username: str | None = None
    """`sasl.username`: required by `PLAIN` and `SCRAM-*`."""

    sasl_password: SecretStr | None = None
    """`sasl.password`: required by `PLAIN` and `SCRAM-*`."""

    ssl_ca_location: str | None = None
    """`ssl.ca.location`: CA certificate file that verifies the broker."""

    ssl_certificate_location: str | None = None
    """`ssl.certificate.location`: client certificate for mutual TLS."""

    ssl_key_location: str | None = None
    """`ssl.key.location`: the client certificate's private key; requires `ssl_certificate_location`."""

    ssl_key_password: SecretStr | None = None
    """`ssl.key.password`: passphrase of `ssl_key_location`."""

    ssl_endpoint_identification_algorithm: Literal["https", "none"] | None = None
    """`ssl.endpoint.identification.algorithm`: `https` checks the broker's hostname, `none` does not."""

    client_id: str = "ppo-telemetry"
    """`client.id`: how the broker's logs and quotas name this client."""

    namespace: str = Field(default="", validation_alias=AliasChoices("PPO_TELEMETRY_NAMESPACE"))
    """Not a librdkafka option: the prefix of every topic, group id and transactional id
    (`avro_schemas.topics.Namespace`, `<namespace>.ppo.telemetry.epochs`); empty for the SPEC's own names.
    Environment: `PPO_TELEMETRY_NAMESPACE`; command line: `--namespace`."""

    extra: dict[str, str | SecretStr] = Field(default_factory=dict)
    """Any other librdkafka key, passed through as given (numbers and booleans become strings).

    Values of secret keys (see `is_secret_key`) are stored as `SecretStr`, so `repr` hides them too.
    """

    def __init__(self, **values: Any) -> None:
        _check_environment_names()
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(_describe(exc)) from exc
        except pydantic_settings.SettingsError as exc:
            # Raised by a source that cannot parse its input, e.g. `extra` from the environment that is
            # not a JSON object; its message names the field and source, not the value.
            raise SettingsError(f"invalid Kafka settings: {exc}") from exc
        except RecursionError:
            # json.loads of an environment value nested thousands deep; pydantic-settings lets it through
            raise SettingsError("invalid Kafka settings: a value from the environment is nested too deeply") from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[pydantic_settings.BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Add the TOML table of `from_toml` below the environment: keywords > env > file > defaults."""
        sources: tuple[PydanticBaseSettingsSource, ...] = (
            init_settings,
            env_settings,
            dotenv_settings,
            file_secret_settings,
        )
        table = _toml_values.get()
        if table is not None:
            sources += (InitSettingsSource(settings_cls, init_kwargs=dict(table)),)
        return sources

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], **overrides: Any) -> KafkaSettings:
        """Settings from the `[kafka]` table of a TOML file, under the environment and `overrides`.

        Precedence, highest first: `overrides` (keyword arguments, e.g. from command-line flags), the
        `PPO_TELEMETRY_KAFKA_*` environment (and `KAFKA_BOOTSTRAP_SERVERS`), the file, the defaults.
        The table uses the Python names (`bootstrap_servers = "broker:9092"`); other librdkafka keys go
        in a `[kafka.extra]` table. Other top-level tables are ignored, so the file can hold more than
        Kafka settings. A missing file or table, invalid TOML, an unknown key or a bad value raises a
        one-line `SettingsError`.
        """
        table = _read_kafka_table(path)
        with _loading(table):
            return cls(**overrides)

    @classmethod
    def resolve(
        cls, bootstrap: str | None, source: Mapping[str, Any] | str | os.PathLike[str] | None
    ) -> KafkaSettings:
        """Settings from a bootstrap list (over everything) and a source: librdkafka properties as a
        program gives them (`from_properties`), the path of a TOML settings file (`from_toml`; an empty
        path is a file that cannot be read, not no file), or None (the environment and the defaults).
        `bootstrap` is checked whatever it is: an empty one is a mistake to report, not the default."""
        overrides: dict[str, Any] = {} if bootstrap is None else {"bootstrap_servers": bootstrap}
        if isinstance(source, Mapping):
            return cls.from_properties(source, **overrides)
        if source is not None:
            return cls.from_toml(source, **overrides)
        return cls(**overrides)

    @classmethod
    def from_properties(cls, properties: Mapping[str, Any], **overrides: Any) -> KafkaSettings:
        """Settings from librdkafka properties as a program gives them (`{"security.protocol": ...}`):
        a property with a typed setting goes to that setting (`security_protocol`), any other to
        `extra`, where it gets the same checks as from a file. `overrides` win over `properties`."""
        typed = {_librdkafka_key(name): name for name in cls.model_fields if name not in ("extra", "namespace")}
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in properties.items():
            name = typed.get(canonical_key(key)) if isinstance(key, str) else None
            if name is None:
                extra[key] = value
            else:
                values[name] = value
        return cls(**{**values, "extra": extra, **overrides})

    @field_validator("extra", mode="before")
    @classmethod
    def _stringify_extra(cls, value: Any) -> Any:
        # TOML and JSON give numbers and booleans their own types; librdkafka wants them as strings,
        # and booleans in lower case. Checked here rather than by pydantic, whose errors for a
        # `str | SecretStr` value would name the union's internals.
        if not isinstance(value, Mapping):
            return value
        converted: dict[str, str | SecretStr] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"keys must be librdkafka option names, not {type(key).__name__}")
            if isinstance(item, bool):
                item = "true" if item else "false"
            elif isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"the value of {show(key)} must be a finite number, got {item}")
            elif isinstance(item, (int, float)):
                item = str(item)
            elif not isinstance(item, (str, SecretStr)):
                raise ValueError(f"the value of {show(key)} must be a string, number or boolean")
            converted[key] = item
        return converted

    @field_validator("extra")
    @classmethod
    def _check_extra(cls, value: dict[str, str | SecretStr]) -> dict[str, str | SecretStr]:
        typed = {_librdkafka_key(name): name for name in cls.model_fields if name != "extra"}
        checked: dict[str, str | SecretStr] = {}
        given_as: dict[str, str] = {}
        for key, item in value.items():
            if not _PROPERTY_NAME.fullmatch(key):
                raise ValueError(f"{show(key)} is not a librdkafka property name (lower-case words joined by '.')")
            # Every check below is made on the canonical name, so an alias cannot slip past one.
            name = canonical_key(key)
            spelled = show(key) if name == key else f"{show(key)} (an alias of {name!r})"
            if name in REFUSED_PROPERTIES:
                raise ValueError(f"{spelled} is refused: {REFUSED_PROPERTIES[name]}")
            if name.endswith("_cb"):
                raise ValueError(f"{spelled} is refused: it is a callback, set by the program")
            if name in typed:
                raise ValueError(f"{spelled} has its own setting; use {typed[name]} instead")
            if name in given_as:
                raise ValueError(f"{show(given_as[name])} and {show(key)} name the same librdkafka property; give it once")
            given_as[name] = key
            if is_secret_key(name) and not isinstance(item, SecretStr):
                item = SecretStr(item)
            checked[name] = item
        return checked

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        # Whichever source gave it (flag, environment, file): an empty or malformed list must not
        # fall back to a default or reach librdkafka, which would retry an unusable address forever.
        return check_bootstrap_servers(value)

    @model_validator(mode="after")
    def _check_consistency(self) -> KafkaSettings:
        self._check_text()
        if self.security_protocol in _SASL_PROTOCOLS:
            if self.sasl_mechanism is None:
                raise ValueError(f"sasl_mechanism: required with security_protocol {self.security_protocol}")
        elif self.sasl_mechanism is not None:
            # librdkafka would ignore it silently, and the broker would then refuse the connection
            # with a far less helpful message.
            raise ValueError(
                f"sasl_mechanism: set, but security_protocol is {self.security_protocol};"
                " use SASL_PLAINTEXT or SASL_SSL"
            )
        if self.sasl_mechanism in _CREDENTIAL_MECHANISMS:
            for name in ("sasl_username", "sasl_password"):
                if getattr(self, name) is None:
                    raise ValueError(f"{name}: required with sasl_mechanism {self.sasl_mechanism}")
        if self.ssl_key_location is not None and self.ssl_certificate_location is None:
            raise ValueError("ssl_key_location: set without ssl_certificate_location")
        return self

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        try:
            return check_namespace_name(value)
        except NamespaceError as exc:
            raise ValueError(str(exc)) from None

    def _check_text(self) -> None:
        # librdkafka takes C strings: a NUL would cut a value short unseen, and a lone surrogate (what
        # Python makes of an environment variable's bytes that are not UTF-8) cannot be encoded at all.
        values = {name: getattr(self, name) for name in type(self).model_fields if name != "extra"}
        values.update((f"extra[{key!r}]", item) for key, item in self.extra.items())
        for name, value in values.items():
            text = _reveal(value) if isinstance(value, (str, SecretStr)) else ""
            if "\x00" in text:
                raise ValueError(f"{name}: contains a NUL character")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{name}: is not valid UTF-8 text (an environment variable's raw bytes?)") from None

    def librdkafka_config(self) -> dict[str, str]:
        """The plain librdkafka config dict for `confluent_kafka`, secrets revealed; unset options omitted.

        Do not log it: use `redacted()` for that.
        """
        typed = self.model_dump(by_alias=True, exclude_none=True, exclude={"extra", "namespace"})
        config = {key: _reveal(value) for key, value in typed.items()}
        config.update((key, _reveal(value)) for key, value in self.extra.items())
        return config

    def redacted(self) -> dict[str, str]:
        """`librdkafka_config()` with every secret value replaced by `"***"`, safe to log."""
        return redact_config(self.librdkafka_config())


def namespace_of(flag: str | None, settings: KafkaSettings | None) -> Namespace:
    """The `Namespace` a program or command asks for: `flag` (`--namespace`, an argument), over the
    settings' (`PPO_TELEMETRY_NAMESPACE`, over the settings file's `[kafka] namespace`), else the
    default (the SPEC's names). A name that cannot prefix topics is a one-line `NamespaceError`."""
    if flag is not None:
        return Namespace(flag)
    return Namespace(settings.namespace) if settings is not None else Namespace()


def _check_environment_names() -> None:
    # pydantic-settings ignores a prefixed variable that names no field, so a typo or a guessed
    # librdkafka name (`PPO_TELEMETRY_KAFKA_LINGER_MS`) would be dropped without a word.
    known = {f"{ENV_PREFIX}{name}".upper() for name in KafkaSettings.model_fields if name != "namespace"}
    for name in os.environ:
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known:
            hint = "; the namespace is PPO_TELEMETRY_NAMESPACE" if name.upper() == f"{ENV_PREFIX}NAMESPACE" else (
                f"; other librdkafka keys go in {ENV_PREFIX}EXTRA, a JSON object"
            )
            raise SettingsError(
                f"invalid Kafka settings: unknown environment variable {show(name)}{hint}; known: {', '.join(sorted(known))}"
            )


@contextmanager
def _loading(table: Mapping[str, Any]) -> Iterator[None]:
    token = _toml_values.set(table)
    try:
        yield
    finally:
        _toml_values.reset(token)


def _read_kafka_table(path: str | os.PathLike[str]) -> dict[str, Any]:
    source = display_path(path)
    data = read_toml(path, SettingsError, "Kafka settings")
    if "kafka" not in data:
        raise SettingsError(f"{source}: no [kafka] table")
    table = data["kafka"]
    if not isinstance(table, dict):
        raise SettingsError(f"{source}: 'kafka' must be a table, [kafka]")
    known = list(KafkaSettings.model_fields)
    for key in table:
        if key not in known:
            hint = " (put other librdkafka keys in [kafka.extra])" if "." in key else ""
            raise SettingsError(
                f"{source}: unknown key {show(key)} in [kafka]{hint}; known: {', '.join(known)}"
            )
    return table


def _describe(exc: ValidationError) -> str:
    """One line naming each failing field and what is wrong, built without the input values."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        field = _describe_loc(error["loc"])
        if error["type"] == "value_error" and "error" in error.get("ctx", {}):
            # Our own checks, which never quote a value; a model-level one names its fields itself.
            message = str(error["ctx"]["error"])
        elif error["type"] == "extra_forbidden":
            message = "unknown setting"
        else:
            message = error["msg"]
        problems.append(f"{field}: {message}" if field else message)
    return "invalid Kafka settings: " + "; ".join(" ".join(p.split()) for p in problems)


def _describe_loc(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return ""
    head, *rest = loc
    return str(head) + "".join(f"[{show(part)}]" for part in rest)
