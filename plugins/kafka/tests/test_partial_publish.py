"""A batch the producer can only partly store says exactly which events were stored."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from dotmac.events import EventBus, Message, PartialPublishError


async def test_a_partly_stored_batch_names_what_was_sent(
    make_bus: Callable[..., EventBus], topic: str
) -> None:
    async with make_bus(max_request_size=4096) as bus:
        batch = [Message(topic, json.dumps({"i": i}).encode(), None, {"ce_id": f"e{i}"}) for i in range(2)]
        batch.append(Message(topic, b'{"pad": "' + b"x" * 8192 + b'"}', None, {"ce_id": "too-big"}))
        batch.append(Message(topic, b"{}", None, {"ce_id": "after"}))
        with pytest.raises(PartialPublishError) as partial:
            await bus.transport.publish(batch)
        assert partial.value.sent == ("e0", "e1")
        assert partial.value.unsent == ("too-big", "after")
        stored = await bus.transport.read(topic, limit=10)
        assert sorted(m.headers["ce_id"] for m in stored) == ["e0", "e1"]
