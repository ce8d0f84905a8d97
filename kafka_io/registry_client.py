"""A client of the Confluent-compatible Schema Registry API (SPEC §11): what the Confluent wire format needs.

The calls are those of the REST API every compatible registry serves (Confluent's own, Apicurio's
`/apis/ccompat/v7`, Karapace, Redpanda): set a subject's compatibility level, register a schema under a
subject (the registry checks it against the subject's earlier versions and answers its id), and fetch a
schema by id. Subjects follow the `TopicNameStrategy`: `<topic>-value`.

Failures are told apart by what the caller can do about them: `RegistryUnavailable` (not reachable, a
timeout, a 5xx: try again later) and `RegistryRejected` (a 4xx: the request itself is wrong, such as an
incompatible schema, 409). A URL's `user:password@` becomes HTTP basic authentication and never appears in
`url` or in any message.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from avro_schemas.errors import TelemetryError

__all__ = ["RegistryClient", "RegistryError", "RegistryRejected", "RegistryUnavailable", "subject_of"]

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryError(TelemetryError):
    """A Schema Registry request failed; the message is one line."""


class RegistryUnavailable(RegistryError):
    """The registry did not answer, or answered 5xx: the same request may succeed later."""


class RegistryRejected(RegistryError):
    """The registry refused the request (4xx); `status` and the registry's `error_code` say why."""

    def __init__(self, message: str, status: int, error_code: int | None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


def subject_of(topic: str) -> str:
    """The subject of a topic's values (the `TopicNameStrategy`)."""
    return f"{topic}-value"


class RegistryClient:
    """The Confluent-compatible API at `url` (for Apicurio: `http://host:port/apis/ccompat/v7`)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RegistryError(f"a Schema Registry URL is http(s)://host[:port][/path], got {_without_password(url)!r}")
        self._authorization = None
        if parts.username is not None:
            credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self._authorization = "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii")
        netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        self.url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        """The API's base URL, without credentials."""
        self.timeout = timeout

    # ------------------------------------------------------------------------------------ the calls

    def set_compatibility(self, subject: str, level: str = "FULL_TRANSITIVE") -> None:
        """The compatibility level every later registration under `subject` is checked at."""
        self._request("PUT", f"/config/{_quote(subject)}", {"compatibility": level})

    def compatibility(self, subject: str) -> str | None:
        """The subject's own compatibility level, or None when it has none (the registry's default applies)."""
        try:
            answer = self._request("GET", f"/config/{_quote(subject)}")
        except RegistryRejected as exc:
            if exc.status == 404:
                return None
            raise
        return answer.get("compatibilityLevel") or answer.get("compatibility")

    def register(self, subject: str, schema: str) -> int:
        """Register the Avro `schema` (JSON text) under `subject`; its id (the same id again when already
        there). `RegistryRejected` (409) when the subject's compatibility level refuses it."""
        answer = self._request("POST", f"/subjects/{_quote(subject)}/versions", {"schema": schema})
        return _schema_id(answer)

    def is_compatible(self, subject: str, schema: str) -> bool:
        """Whether `schema` may be registered under `subject` at its level (True for a subject with none)."""
        try:
            answer = self._request("POST", f"/compatibility/subjects/{_quote(subject)}/versions/latest", {"schema": schema})
        except RegistryRejected as exc:
            if exc.status == 404:
                return True  # no version yet: anything is compatible with nothing
            raise
        return bool(answer.get("is_compatible"))

    def schema(self, schema_id: int) -> str | None:
        """The schema (JSON text) with this id, or None when the registry has none."""
        try:
            answer = self._request("GET", f"/schemas/ids/{int(schema_id)}")
        except RegistryRejected as exc:
            if exc.status == 404:
                return None
            raise
        schema = answer.get("schema")
        if not isinstance(schema, str):
            raise RegistryError(f"{self.url}: schema {schema_id} came without its schema text")
        return schema

    def subjects(self) -> list[str]:
        """Every subject the registry holds."""
        return list(self._request("GET", "/subjects"))

    def versions(self, subject: str) -> list[int]:
        """The version numbers under `subject`, oldest first."""
        return list(self._request("GET", f"/subjects/{_quote(subject)}/versions"))

    # ------------------------------------------------------------------------------------ HTTP

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Accept", CONTENT_TYPE)
        if data is not None:
            request.add_header("Content-Type", CONTENT_TYPE)
        if self._authorization is not None:
            request.add_header("Authorization", self._authorization)
        where = f"Schema Registry {self.url}: {method} {path}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            raise _http_failure(where, exc) from None
        except (urllib.error.URLError, OSError) as exc:  # refused, unresolvable, timed out, reset
            cause = getattr(exc, "reason", exc)
            raise RegistryUnavailable(f"{where}: not reachable ({cause})") from None
        try:
            return json.loads(text) if text else {}
        except ValueError:
            raise RegistryUnavailable(f"{where}: the answer is not JSON") from None


def _http_failure(where: str, error: urllib.error.HTTPError) -> RegistryError:
    """A 4xx as `RegistryRejected` with the registry's own message; anything else as `RegistryUnavailable`."""
    try:
        detail = json.loads(error.read() or b"{}")
    except ValueError:
        detail = {}
    error_code = detail.get("error_code") if isinstance(detail, dict) else None
    message = detail.get("message") if isinstance(detail, dict) else None
    text = f"{where}: HTTP {error.code}" + (f": {' '.join(str(message).split())[:500]}" if message else "")
    if 400 <= error.code < 500:
        return RegistryRejected(text, error.code, error_code if isinstance(error_code, int) else None)
    return RegistryUnavailable(text)


def _schema_id(answer: Any) -> int:
    schema_id = answer.get("id") if isinstance(answer, dict) else None
    if not isinstance(schema_id, int) or isinstance(schema_id, bool):
        raise RegistryError(f"the registry answered a registration without an id: {str(answer)[:200]}")
    return schema_id


def _quote(subject: str) -> str:
    return urllib.parse.quote(subject, safe="")


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)
