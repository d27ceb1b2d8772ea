"""``create_bus``: from a URL, a config object, a dict, a TOML section or the environment."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError
from cattrs.v import format_exception

from .bus import EventBus, PayloadValidator
from .codec import Codec
from .errors import ConfigurationError
from .plugins import get_plugin_manager, get_registry
from .registry import TransportSpec

__all__ = ["ENV_URL", "create_bus", "load_toml_config", "redact_url", "structure_config"]

ENV_URL = "DOTMAC_EVENTS_URL"
_BUS_KEYS = frozenset(
    {"codec", "codec_options", "source", "drain_timeout", "max_message_bytes", "content_mode", "topic_modes"}
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _structure_bool(value: Any, _type: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected a boolean (true/false), got {value!r}")


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(bool, _structure_bool)
    return converter


_converter = _make_converter()


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and errors)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def _format_error(exc: BaseException, type_: Any) -> str:
    # A config class's own validators already say precisely what is wrong.
    if isinstance(exc, ConfigurationError):
        return str(exc)
    return format_exception(exc, type_)


def structure_config(spec: TransportSpec, data: Mapping[str, Any]) -> Any:
    """Build ``spec.config_class`` from ``data``; a wrong key or value names its path."""
    try:
        return _converter.structure(dict(data), spec.config_class)
    except (ClassValidationError, ForbiddenExtraKeysError) as exc:
        messages = cattrs.transform_error(
            exc, path=spec.config_class.__name__, format_exception=_format_error
        )
        raise ConfigurationError(f"invalid {spec.name} configuration: " + "; ".join(messages)) from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigurationError):
            raise
        raise ConfigurationError(f"invalid {spec.name} configuration: {exc}") from None


def _from_url(url: str) -> tuple[TransportSpec, Any]:
    registry = get_registry()
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(f"malformed event bus URL {redact_url(url)!r}: {exc}") from None
    if not parts.scheme:
        raise ConfigurationError(
            f"event bus URL {redact_url(url)!r} has no scheme (expected e.g. memory://, redis://, kafka://)"
        )
    spec = registry.transport_for_scheme(parts.scheme)
    fields: dict[str, Any] = spec.parse_url(url) if spec.parse_url is not None else {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        fields[key] = value
    return spec, structure_config(spec, fields)


def _from_dict(data: Mapping[str, Any]) -> tuple[TransportSpec, Any, dict[str, Any]]:
    data = dict(data)
    bus_kwargs = dict(data.pop("bus", {}) or {})
    unknown = set(bus_kwargs) - _BUS_KEYS
    if unknown:
        raise ConfigurationError(f"unknown bus setting(s): {', '.join(sorted(unknown))}")
    url = data.pop("url", None)
    name = data.pop("transport", None)
    registry = get_registry()
    if url is not None:
        spec, base = _from_url(url)
        merged = {**attrs.asdict(base, recurse=False), **data} if data else None
        return spec, (structure_config(spec, merged) if merged is not None else base), bus_kwargs
    if name is None:
        raise ConfigurationError("a bus config dict needs a 'url' or a 'transport' key")
    spec = registry.transport_named(str(name))
    return spec, structure_config(spec, data), bus_kwargs


def load_toml_config(path: str | os.PathLike[str], section: str = "dotmac.events") -> dict[str, Any]:
    """Read the table ``section`` (dotted) of a TOML file, for :func:`create_bus`."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10
        import tomli as tomllib
    raw = Path(path).read_bytes()
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from exc
    node: Any = document
    for part in section.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigurationError(f"{path}: no [{section}] table")
        node = node[part]
    if not isinstance(node, dict):
        raise ConfigurationError(f"{path}: [{section}] is not a table")
    return node


def create_bus(
    target: str | Mapping[str, Any] | object | None = None,
    *,
    codec: str | Codec | None = None,
    codec_options: Mapping[str, Any] | None = None,
    topic_codecs: Mapping[str, str | Codec] | None = None,
    source: str | None = None,
    drain_timeout: float | None = None,
    max_message_bytes: int | None = None,
    observers: Iterable[object] = (),
    validators: Mapping[str, PayloadValidator] | None = None,
    content_mode: str | None = None,
    topic_modes: Mapping[str, str] | None = None,
) -> EventBus:
    """Build an un-started :class:`EventBus`.

    ``target`` is a URL (``"memory://"``, ``"redis://host:6379/0"``,
    ``"kafka://host:9092"``, with config fields as query parameters), a transport
    config object (``MemoryConfig(...)``, ``RedisConfig(...)``), a dict (``{"url": ...}``
    or ``{"transport": "redis", "host": ...}``, with an optional ``"bus"`` table for
    the keyword arguments below), or ``None`` to read ``$DOTMAC_EVENTS_URL``
    (``memory://`` when unset).

    ``observers`` are objects with ``@hookimpl`` observer hooks used by this bus only.

    ``content_mode`` is how events are written: ``"binary"`` (the default: the body
    is the payload, attributes travel as ``ce_*`` headers) or ``"structured"`` (the
    body is a CloudEvents JSON document, ``application/cloudevents+json``).
    ``topic_modes`` sets it per topic (``{"orders": "structured"}``). Both modes are
    read on every topic whatever is set here.
    """
    bus_kwargs: dict[str, Any] = {}
    if target is None:
        target = os.environ.get(ENV_URL) or "memory://"
    if isinstance(target, str):
        spec, config = _from_url(target)
    elif isinstance(target, Mapping):
        spec, config, bus_kwargs = _from_dict(target)
    elif attrs.has(type(target)):
        spec = get_registry().transport_for_config(target)
        config = target
    else:
        raise ConfigurationError(
            f"create_bus() takes a URL, a config object or a dict, not {type(target).__name__}"
        )
    explicit = {
        "codec": codec,
        "codec_options": codec_options,
        "source": source,
        "drain_timeout": drain_timeout,
        "max_message_bytes": max_message_bytes,
        "content_mode": content_mode,
        "topic_modes": topic_modes,
    }
    bus_kwargs.update({k: v for k, v in explicit.items() if v is not None})
    transport = spec.factory(config)
    return EventBus(
        transport,
        registry=get_registry(),
        plugin_manager=get_plugin_manager(),
        topic_codecs=topic_codecs,
        observers=observers,
        validators=validators,
        **bus_kwargs,
    )
