"""A client for the Confluent Schema Registry REST API (standard library only).

Calls are synchronous (``urllib``) because codecs are; results are cached so that a
running bus only talks to the registry the first time it meets a subject or an id:
ids never change their schema, so the id cache never expires.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from dotmac.events.errors import ConfigurationError

from .errors import (
    IncompatibleSchemaError,
    InvalidSchemaError,
    SchemaNotFoundError,
    SchemaRegistryError,
    SchemaRegistryUnavailableError,
    SubjectNotFoundError,
)
from .registry import RegisteredSchema, SchemaRegistry
from .schema import normalize_schema_text

__all__ = ["CONTENT_TYPE", "HttpSchemaRegistry"]

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_ACCEPT = (
    "application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json; qs=0.9, "
    "application/json; qs=0.5"
)
_MAX_ERROR_BODY = 64 * 1024


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect would resend the Authorization header to wherever it points.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _split_url(url: str) -> tuple[str, str | None, str | None]:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"schema registry URL must be http(s)://host[:port][/path], got {_redact(url)!r}"
        )
    netloc = parts.netloc.rsplit("@", 1)[-1]
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return base, user, password


def _redact(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[-1]))


class HttpSchemaRegistry(SchemaRegistry):
    """Talks to a Confluent-compatible Schema Registry over HTTP(S).

    ``url`` is one base URL, a comma-separated list, or a sequence; on a network
    failure or a 5xx answer the next URL is tried. Credentials come from the URL's
    user-info (``https://key:secret@host``), ``username``/``password`` (HTTP basic)
    or ``token`` (bearer); they never appear in reprs, logs or error messages.
    ``ca_file``, ``cert_file``/``key_file`` and ``verify`` configure TLS. Every call
    gives up after ``timeout`` seconds per URL. Redirects are refused.

    Cached for the life of the client: schema text by id, and the id of each
    (subject, schema) pair registered or looked up.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        verify: bool = True,
        headers: Mapping[str, str] | None = None,
        max_response_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        urls = [u for u in url.split(",") if u.strip()] if isinstance(url, str) else list(url)
        if not urls:
            raise ConfigurationError("a schema registry URL is required")
        self._urls: list[str] = []
        for one in urls:
            base, url_user, url_password = _split_url(one)
            self._urls.append(base)
            if url_user is not None and username is None:
                username, password = url_user, url_password
        if token is not None and username is not None:
            raise ConfigurationError("give the schema registry either basic credentials or a token, not both")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigurationError(f"schema registry timeout must be > 0 seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self.max_response_bytes = int(max_response_bytes)
        self._auth: str | None = None
        if username is not None:
            pair = f"{username}:{password or ''}".encode()
            self._auth = "Basic " + base64.b64encode(pair).decode("ascii")
        elif token is not None:
            self._auth = f"Bearer {token}"
        self._headers = {"Accept": _ACCEPT, "User-Agent": "dotmac-events-avro"}
        for name, value in (headers or {}).items():
            if any(c in f"{name}{value}" for c in "\r\n\x00"):
                raise ConfigurationError(f"schema registry header {name!r} holds CR, LF or NUL")
            self._headers[str(name)] = str(value)
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if any(u.startswith("https:") for u in self._urls):
            context = ssl.create_default_context(cafile=ca_file)
            if not verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if cert_file is not None:
                context.load_cert_chain(cert_file, key_file)
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)
        self._lock = threading.Lock()
        self._by_id: dict[int, str] = {}
        self._ids: dict[tuple[str, str], int] = {}

    def __repr__(self) -> str:
        return f"<HttpSchemaRegistry {','.join(self._urls)}>"

    @property
    def urls(self) -> tuple[str, ...]:
        """The base URLs, without credentials."""
        return tuple(self._urls)

    # -- the API ------------------------------------------------------------------------
    def register(self, subject: str, schema: str) -> int:
        key = (subject, _identity(schema))
        with self._lock:
            cached = self._ids.get(key)
        if cached is not None:
            return cached
        answer = self._call("POST", f"/subjects/{_q(subject)}/versions", {"schema": schema}, subject=subject)
        schema_id = _int_field(answer, "id", "register")
        self._remember(key, schema_id, schema)
        log.debug("schema registry: %s has schema id %d", subject, schema_id)
        return schema_id

    def lookup(self, subject: str, schema: str) -> int:
        key = (subject, _identity(schema))
        with self._lock:
            cached = self._ids.get(key)
        if cached is not None:
            return cached
        answer = self._call("POST", f"/subjects/{_q(subject)}", {"schema": schema}, subject=subject)
        schema_id = _int_field(answer, "id", "lookup")
        self._remember(key, schema_id, schema)
        return schema_id

    def get_schema(self, schema_id: int) -> str:
        with self._lock:
            cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        answer = self._call("GET", f"/schemas/ids/{int(schema_id)}", None, schema_id=schema_id)
        schema_type = answer.get("schemaType", "AVRO") if isinstance(answer, dict) else "AVRO"
        if schema_type != "AVRO":
            raise SchemaRegistryError(f"schema id {schema_id} is a {schema_type} schema, not Avro")
        text = _str_field(answer, "schema", "get schema")
        with self._lock:
            self._by_id[schema_id] = text
        return text

    def latest(self, subject: str) -> RegisteredSchema:
        return self.version(subject, "latest")

    def version(self, subject: str, version: int | str) -> RegisteredSchema:
        """Version ``version`` (a number or ``"latest"``) of ``subject``."""
        path = f"/subjects/{_q(subject)}/versions/{_q(str(version))}"
        answer = self._call("GET", path, None, subject=subject)
        schema_id = _int_field(answer, "id", "get version")
        text = _str_field(answer, "schema", "get version")
        number = _int_field(answer, "version", "get version")
        with self._lock:
            self._by_id.setdefault(schema_id, text)
        return RegisteredSchema(subject, number, schema_id, text)

    def subjects(self) -> list[str]:
        """Every subject of the registry."""
        answer = self._call("GET", "/subjects", None)
        if not isinstance(answer, list) or not all(isinstance(s, str) for s in answer):
            raise SchemaRegistryError("schema registry answered GET /subjects with something not a list")
        return list(answer)

    # -- plumbing -----------------------------------------------------------------------
    def _remember(self, key: tuple[str, str], schema_id: int, schema: str) -> None:
        with self._lock:
            self._ids[key] = schema_id
            self._by_id.setdefault(schema_id, schema)

    def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        *,
        subject: str | None = None,
        schema_id: int | None = None,
    ) -> Any:
        data = json.dumps(body).encode("utf-8") if body is not None else None
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = CONTENT_TYPE
        if self._auth is not None:
            headers["Authorization"] = self._auth
        failure: SchemaRegistryError | None = None
        for base in self._urls:
            # Only http(s) base URLs get here (checked in __init__), never file: or custom schemes.
            request = urllib.request.Request(base + path, data=data, method=method, headers=headers)  # noqa: S310
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    raw = response.read(self.max_response_bytes + 1)
            except urllib.error.HTTPError as exc:
                error = _http_error(exc, method, path, subject=subject, schema_id=schema_id)
                exc.close()
                if isinstance(error, SchemaRegistryUnavailableError):
                    failure = error
                    continue
                raise error from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                failure = SchemaRegistryUnavailableError(
                    f"schema registry {base} unreachable ({method} {_path_only(path)}): {reason}"
                )
                log.debug("schema registry %s failed: %s", base, reason)
                continue
            if len(raw) > self.max_response_bytes:
                raise SchemaRegistryError(
                    f"schema registry answer to {method} {_path_only(path)} is larger than "
                    f"{self.max_response_bytes} bytes"
                )
            try:
                return json.loads(raw) if raw else None
            except ValueError as exc:
                raise SchemaRegistryError(
                    f"schema registry answered {method} {_path_only(path)} with invalid JSON: {exc}"
                ) from None
        assert failure is not None
        raise failure


def _q(segment: str) -> str:
    return quote(segment, safe="")


def _path_only(path: str) -> str:
    return path.split("?", 1)[0]


def _identity(schema: str) -> str:
    try:
        return normalize_schema_text(schema)
    except ValueError:
        return schema  # the registry will reject it with a proper message


def _int_field(answer: Any, name: str, what: str) -> int:
    value = answer.get(name) if isinstance(answer, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SchemaRegistryError(f"schema registry answer to {what} has no integer {name!r}")
    return value


def _str_field(answer: Any, name: str, what: str) -> str:
    value = answer.get(name) if isinstance(answer, dict) else None
    if not isinstance(value, str):
        raise SchemaRegistryError(f"schema registry answer to {what} has no text {name!r}")
    return value


def _http_error(
    exc: urllib.error.HTTPError, method: str, path: str, *, subject: str | None, schema_id: int | None
) -> SchemaRegistryError:
    status = exc.code
    code: int | None = None
    detail = ""
    try:
        raw = exc.read(_MAX_ERROR_BODY)
        body = json.loads(raw) if raw else None
    except (OSError, ValueError):
        body = None
    if isinstance(body, dict):
        if isinstance(body.get("error_code"), int):
            code = body["error_code"]
        if isinstance(body.get("message"), str):
            detail = body["message"][:500]
    what = f"{method} {_path_only(path)}"
    text = f"schema registry answered {what} with HTTP {status}" + (f" ({code})" if code else "")
    if detail:
        text += f": {detail}"
    if status == 404:
        if code == 40401:
            return SubjectNotFoundError(text, status=status, error_code=code)
        return SchemaNotFoundError(text, status=status, error_code=code)
    if status == 409:
        return IncompatibleSchemaError(text, status=status, error_code=code)
    if status == 422 and code in (None, 42201):
        return InvalidSchemaError(text, status=status, error_code=code)
    if status in (408, 429) or status >= 500:
        return SchemaRegistryUnavailableError(text, status=status, error_code=code)
    return SchemaRegistryError(text, status=status, error_code=code)
