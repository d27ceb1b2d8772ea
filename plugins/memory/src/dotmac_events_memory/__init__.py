"""dotmac-events-memory: the embedded ``memory://`` transport.

This module holds only the plugin's hook implementations and its public names.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from dotmac.events import EventBus, TransportSpec, create_bus, hookimpl
from dotmac.events.registry import Registry

from .config import MemoryConfig, default_persistence_dir
from .transport import CAPABILITIES, MemoryTransport, read_persistence_log

__all__ = [
    "MemoryConfig",
    "MemoryTransport",
    "create_memory_bus",
    "default_persistence_dir",
    "read_persistence_log",
]


def _parse_url(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    name = (parts.netloc + parts.path).strip("/")
    return {"name": name} if name else {}


def create_memory_bus(config: MemoryConfig | None = None, **bus_options: Any) -> EventBus:
    """A bus on the memory transport (the seed's name for ``create_bus("memory://")``)."""
    return create_bus(config or MemoryConfig(), **bus_options)


@hookimpl
def dotmac_events_register_transports(register: Registry) -> None:
    register.add_transport(
        TransportSpec(
            name="memory",
            schemes=("memory",),
            config_class=MemoryConfig,
            factory=MemoryTransport,
            capabilities=CAPABILITIES,
            parse_url=_parse_url,
            description="in-process broker (the embedded default)",
        )
    )
