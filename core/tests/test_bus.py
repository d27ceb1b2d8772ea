"""Bus behaviour beyond the conformance kit (runs where the memory plugin is installed)."""

from __future__ import annotations

import asyncio
import gc
import warnings
from pathlib import Path
from typing import Any

import pytest

from dotmac.events import (
    BusStateError,
    Codec,
    ConfigurationError,
    ConsumerOptions,
    Event,
    EventMetadata,
    MessageTooLargeError,
    SchemaValidationError,
    UnsupportedOperationError,
    ValidationError,
    create_bus,
    hookimpl,
    load_toml_config,
)
from dotmac.events.testing import Collector, wait_for

pytest.importorskip("dotmac_events_memory")


class Recorder:
    """An observer plugin recording every hook call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    @hookimpl
    def dotmac_events_on_publish(
        self, event: Event, info: Any, duration: float, outcome: str, error: Any
    ) -> None:
        self.calls.append(("publish", {"topic": info.topic, "outcome": outcome, "duration": duration}))

    @hookimpl
    def dotmac_events_on_consume(
        self, event: Event, info: Any, duration: float, outcome: str, error: Any, attempts: int
    ) -> None:
        self.calls.append(("consume", {"outcome": outcome, "attempts": attempts, "group": info.group}))

    @hookimpl
    def dotmac_events_on_retry(self, event: Event, info: Any, attempt: int, delay: float, error: Any) -> None:
        self.calls.append(("retry", {"attempt": attempt}))

    @hookimpl
    def dotmac_events_on_dead_letter(
        self, event: Any, message: Any, info: Any, dlq_topic: str, reason: str, error: Any, attempts: int
    ) -> None:
        self.calls.append(("dead_letter", {"dlq_topic": dlq_topic, "reason": reason}))

    @hookimpl
    def dotmac_events_publish_context(self, event: Event, info: Any) -> Any:
        from contextlib import contextmanager

        @contextmanager
        def cm() -> Any:
            yield {"x-observed": "yes"}

        return cm()


async def test_observers_see_publish_retry_consume_and_dead_letter(memory_url: str) -> None:
    recorder = Recorder()
    async with create_bus(memory_url, observers=[recorder]) as bus:
        handler = Collector(fail=lambda e, n: RuntimeError("x") if e.payload["i"] == 1 or n == 1 else None)
        await bus.subscribe("obs", handler, group="g", options=ConsumerOptions(max_retries=1))
        await bus.publish(Event(topic="obs", payload={"i": 0}))
        await bus.publish(Event(topic="obs", payload={"i": 1}))
        await handler.wait_count(1, 5)
        await wait_for(lambda: "dead_letter" in recorder.names(), 5, what="dead letter hook")
        await wait_for(lambda: recorder.names().count("consume") == 2, 5, what="consume hooks")
    assert handler.events[0].headers["x-observed"] == "yes"  # publish context injected a header
    consumes = [c for n, c in recorder.calls if n == "consume"]
    assert {c["outcome"] for c in consumes} == {"success", "dead_letter"}
    assert all(c["group"] == "g" for c in consumes)
    assert [c["reason"] for n, c in recorder.calls if n == "dead_letter"] == ["max_retries"]
    assert recorder.names().count("retry") == 2
    publishes = [c for n, c in recorder.calls if n == "publish" and c["topic"] == "obs"]
    assert [c["outcome"] for c in publishes] == ["success", "success"]


async def test_a_bus_without_observers_resolves_none(memory_url: str) -> None:
    async with create_bus(memory_url) as bus:
        assert bus._observers.any is False


async def test_observers_are_per_bus(memory_url: str) -> None:
    recorder = Recorder()
    async with create_bus(memory_url, observers=[recorder]) as observed, create_bus(memory_url) as plain:
        await plain.publish(Event(topic="t"))
        assert recorder.calls == []
        await observed.publish(Event(topic="t"))
        assert recorder.names() == ["publish"]


async def test_schema_validation_callable_rejects_at_publish(memory_url: str) -> None:
    def positive(payload: dict[str, Any]) -> bool:
        return payload.get("amount", 0) > 0

    async with create_bus(memory_url, validators={"orders": positive}) as bus:
        handler = Collector()
        await bus.subscribe("orders", handler)
        with pytest.raises(SchemaValidationError, match="rejected by the validator of 'orders'"):
            await bus.publish(Event(topic="orders", payload={"amount": -1}))
        await bus.publish(Event(topic="orders", payload={"amount": 5}))
        await handler.wait_count(1, 5)
        assert handler.payloads("amount") == [5]


async def test_json_schema_rejects_at_publish_and_dead_letters_at_consume(memory_url: str) -> None:
    pytest.importorskip("jsonschema")
    schema = {
        "type": "object",
        "properties": {"amount": {"type": "number"}, "lines": {"type": "array", "items": {"type": "string"}}},
        "required": ["amount"],
    }
    async with create_bus(memory_url, validators={"orders": schema}) as strict, create_bus(memory_url) as lax:
        handler = Collector()
        sub = await strict.subscribe("orders", handler)
        with pytest.raises(SchemaValidationError) as info:
            await strict.publish(Event(topic="orders", payload={"amount": 1, "lines": ["a", 2]}))
        assert info.value.field == "payload['lines'][1]"
        await lax.publish(Event(topic="orders", payload={"lines": []}))  # the producer did not validate
        await lax.publish(Event(topic="orders", payload={"amount": 3}))
        await handler.wait_count(1, 5)
        await wait_for(lambda: sub.dead_lettered == 1, 5, what="schema dead letter")
        letters = await strict.dlq.list("orders.dlq")
        assert [letter.reason for letter in letters] == ["schema"]
        assert letters[0].error_type == "SchemaValidationError"


async def test_message_size_is_bounded_before_sending(memory_url: str) -> None:
    async with create_bus(memory_url, max_message_bytes=100) as bus:
        handler = Collector()
        await bus.subscribe("big", handler)
        with pytest.raises(MessageTooLargeError, match="maximum is 100"):
            await bus.publish(Event(topic="big", payload={"blob": "x" * 200}))
        await bus.publish(Event(topic="big", payload={"i": 1}))
        await handler.wait_count(1, 5)
        assert handler.payloads("i") == [1]


class ReverseCodec(Codec):
    name = "reverse"
    content_type = "application/x-reverse"

    def encode(self, event: Event) -> bytes:
        return repr(sorted(event.payload.items())).encode()[::-1]

    def decode(self, data: bytes, *, topic: str, headers: Any) -> dict[str, Any]:
        import ast

        return dict(ast.literal_eval(data[::-1].decode()))


async def test_codecs_per_topic_share_one_consumer(memory_url: str) -> None:
    codec = ReverseCodec()
    async with create_bus(memory_url, topic_codecs={"mixed": codec}) as producer:
        async with create_bus(memory_url, topic_codecs={"other": codec}) as consumer:
            handler = Collector()
            await consumer.subscribe("mixed", handler)
            await producer.publish(Event(topic="mixed", payload={"a": 1}))
            await producer.publish(
                Event(
                    topic="mixed", payload={"b": 2}, metadata=EventMetadata(content_type="application/json")
                )
            )
            await handler.wait_count(2, 5)
    assert [e.metadata.content_type for e in handler.events] == ["application/x-reverse", "application/json"]
    assert [e.payload for e in handler.events] == [{"a": 1}, {"b": 2}]


async def test_unknown_content_type_is_dead_lettered(memory_url: str) -> None:
    async with (
        create_bus(memory_url, topic_codecs={"t": ReverseCodec()}) as producer,
        create_bus(memory_url) as consumer,
    ):
        handler = Collector()
        sub = await consumer.subscribe("t", handler)
        await producer.publish(Event(topic="t", payload={"a": 1}))
        await wait_for(lambda: sub.dead_lettered == 1, 5, what="dead letter")
        letters = await consumer.dlq.list("t.dlq")
        assert "no installed codec reads content type 'application/x-reverse'" in (
            letters[0].error_message or ""
        )


async def test_sync_handlers_and_event_replies(memory_url: str) -> None:
    async with create_bus(memory_url) as bus:

        def quote(event: Event) -> Event:
            return Event(topic="ignored", payload={"price": event.payload["qty"] * 3})

        await bus.subscribe("rpc.quote", quote, group="quotes")
        reply = await bus.request(Event(topic="rpc.quote", payload={"qty": 2}), timeout=5)
        assert reply.payload == {"price": 6}
        assert reply.topic.startswith("dotmac.reply.")


async def test_handler_timeout_counts_as_failure(memory_url: str) -> None:
    async with create_bus(memory_url) as bus:
        calls = 0

        async def slow(event: Event) -> None:
            nonlocal calls
            calls += 1
            await asyncio.Event().wait()  # never finishes on its own

        sub = await bus.subscribe("slow", slow, options=ConsumerOptions(max_retries=1, handler_timeout=0.05))
        await bus.publish(Event(topic="slow"))
        await wait_for(lambda: sub.dead_lettered == 1, 5, what="timeout dead letter")
        assert calls == 2
        letters = await bus.dlq.list("slow.dlq")
        assert letters[0].error_type == "HandlerTimeoutError"
        assert letters[0].error_message == "handler did not finish within handler_timeout=0.05s"


async def test_max_deliveries_dead_letters_redelivered_events(memory_url: str) -> None:
    async with create_bus(memory_url) as bus:
        gate = asyncio.Event()
        started = asyncio.Event()

        async def crashy(event: Event) -> None:
            started.set()
            await gate.wait()

        options = ConsumerOptions(max_deliveries=2)
        for _ in range(2):
            started.clear()
            sub = await bus.subscribe("crashy", crashy, group="g", options=options)
            if _ == 0:
                await bus.publish(Event(topic="crashy"))
            await asyncio.wait_for(started.wait(), 5)
            await sub.stop(timeout=0.01)  # "crash": the event is released un-acked
        third = await bus.subscribe("crashy", crashy, group="g", options=options)
        await wait_for(lambda: third.dead_lettered == 1, 5, what="max_deliveries dead letter")
        letters = await bus.dlq.list("crashy.dlq")
        assert letters[0].reason == "max_deliveries"
        assert letters[0].attempts == 2


async def test_state_errors(memory_url: str) -> None:
    bus = create_bus(memory_url)
    with pytest.raises(BusStateError, match="not started"):
        await bus.publish(Event(topic="t"))
    with pytest.raises(BusStateError, match="not started"):
        await bus.subscribe("t", Collector())
    async with bus:
        with pytest.raises(ValidationError, match="at least one topic"):
            await bus.subscribe([], Collector())
        with pytest.raises(ConfigurationError, match="callable"):
            await bus.subscribe("t", "not callable")  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="dlq_topic"):
            await bus.subscribe("a" * 247, Collector())  # "<topic>.dlq" would be too long


async def test_unclosed_bus_warns(memory_url: str) -> None:
    bus = create_bus(memory_url)
    await bus.start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del bus
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)


async def test_request_needs_capability(memory_url: str) -> None:
    from attrs import evolve

    async with create_bus(memory_url) as bus:
        bus.transport.capabilities = evolve(bus.capabilities, request_reply=False)  # type: ignore[misc]
        with pytest.raises(UnsupportedOperationError):
            await bus.request(Event(topic="t"))


def test_config_from_url_query(memory_url: str) -> None:
    bus = create_bus(memory_url + "?max_queue_size=5&overflow=fail&enable_persistence=false")
    config = bus.transport.config  # type: ignore[attr-defined]
    assert (config.max_queue_size, config.overflow, config.enable_persistence) == (5, "fail", False)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("memory://x?max_queue_sise=5", "extra fields found (max_queue_sise)"),
        ("memory://x?max_queue_size=many", "MemoryConfig.max_queue_size"),
        ("memory://x?enable_persistence=perhaps", "MemoryConfig.enable_persistence"),
        ("memory://x?overflow=explode", "MemoryConfig.overflow"),
        ("memory://x?max_queue_size=0", "MemoryConfig.max_queue_size must be an int >= 1, got 0"),
        ("no-scheme-here", "has no scheme"),
    ],
)
def test_config_errors_name_the_field(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        create_bus(url)
    assert fragment in str(info.value)


def test_config_from_dict_and_object(memory_url: str) -> None:
    from dotmac_events_memory import MemoryConfig, create_memory_bus

    bus = create_bus({"url": memory_url, "max_queue_size": 7, "bus": {"source": "billing"}})
    assert bus.transport.config.max_queue_size == 7  # type: ignore[attr-defined]
    assert bus.source == "billing"
    bus = create_bus({"transport": "memory", "name": "n", "retention": 0})
    assert bus.transport.config.retention == 0  # type: ignore[attr-defined]
    bus = create_memory_bus(MemoryConfig(max_queue_size=1000, enable_persistence=False))
    assert bus.transport.config.max_queue_size == 1000  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="'url' or a 'transport'"):
        create_bus({"max_queue_size": 3})
    with pytest.raises(ConfigurationError, match="unknown bus setting"):
        create_bus({"url": memory_url, "bus": {"colour": "red"}})
    with pytest.raises(ConfigurationError, match="not int"):
        create_bus(42)


def test_config_from_environment(monkeypatch: pytest.MonkeyPatch, memory_url: str) -> None:
    monkeypatch.setenv("DOTMAC_EVENTS_URL", memory_url + "?max_queue_size=3")
    assert create_bus().transport.config.max_queue_size == 3  # type: ignore[attr-defined]
    monkeypatch.delenv("DOTMAC_EVENTS_URL")
    assert create_bus().transport.name == "memory"


def test_config_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "app.toml"
    path.write_text(
        '[dotmac.events]\nurl = "memory://toml"\nmax_queue_size = 9\n[dotmac.events.bus]\nsource = "svc"\n'
    )
    bus = create_bus(load_toml_config(path))
    assert bus.transport.config.max_queue_size == 9  # type: ignore[attr-defined]
    assert bus.source == "svc"
    with pytest.raises(ConfigurationError, match=r"no \[tool.x\] table"):
        load_toml_config(path, section="tool.x")
    path.write_text("not = [toml")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_toml_config(path)


def test_redacted_url() -> None:
    from dotmac.events.config import redact_url

    assert redact_url("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact_url("memory://x") == "memory://x"
