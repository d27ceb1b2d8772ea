"""The service framework: an :class:`App` of decorated subscribers and publishers.

>>> from dotmac.events import App
>>> app = App("memory://")
>>> @app.subscriber("orders.created", group="billing")
... async def bill(order: dict) -> None: ...

Run it with ``dotmac-events run module:app`` or, inside another asyncio program,
``async with app:``. Test it with :class:`dotmac.events.testing.TestApp`.
"""

from __future__ import annotations

from ._app import (
    App,
    CallNext,
    DrainReport,
    Lifespan,
    Middleware,
    PublisherSpec,
    SubscriberSpec,
    current_event,
)
from ._params import make_converter
from .middleware import CorrelationIdFilter, HandlerTimeoutError, correlation_id, rate_limit, timeout

__all__ = [
    "App",
    "CallNext",
    "CorrelationIdFilter",
    "DrainReport",
    "HandlerTimeoutError",
    "Lifespan",
    "Middleware",
    "PublisherSpec",
    "SubscriberSpec",
    "correlation_id",
    "current_event",
    "make_converter",
    "rate_limit",
    "timeout",
]
