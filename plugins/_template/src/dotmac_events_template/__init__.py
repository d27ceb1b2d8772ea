"""Hook implementations of the template plugin (and nothing else)."""

from __future__ import annotations

from urllib.parse import urlsplit

from dotmac.events import TransportSpec, hookimpl
from dotmac.events.registry import Registry

from .config import TemplateConfig
from .transport import CAPABILITIES, TemplateTransport

__all__ = ["TemplateConfig", "TemplateTransport"]


def _parse_url(url: str) -> dict[str, object]:
    parts = urlsplit(url)
    fields: dict[str, object] = {}
    if parts.hostname:
        fields["host"] = parts.hostname
    if parts.port:
        fields["port"] = parts.port
    return fields


@hookimpl
def dotmac_events_register_transports(register: Registry) -> None:
    register.add_transport(
        TransportSpec(
            name="template",
            schemes=("template",),
            config_class=TemplateConfig,
            factory=TemplateTransport,
            capabilities=CAPABILITIES,
            parse_url=_parse_url,
        )
    )
