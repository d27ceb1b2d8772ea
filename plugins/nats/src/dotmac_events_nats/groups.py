"""Consumer groups and topics as JetStream reports them (``bus.groups``, ``bus.topics``).

A group is a durable pull consumer of the bus's stream filtered on the topic's
subject: its ``num_pending`` (messages of the subject it was not handed yet) is the
lag and ``num_ack_pending`` (handed out, not acknowledged) the pending count. Pull
consumers have no named members on the server (``num_waiting`` counts open pull
requests, not consumers), and the server does not say when the oldest pending message
was handed out, so ``members`` is empty, ``member_count`` and ``oldest_pending_age``
are ``None``.

Consumer names hold a hash of the group and topic (``subjects.consumer_name``), so the
group is recovered from the consumer's description (written when the bus creates the
consumer) or, for consumers created without one, by finding the group name whose
consumer name it is. A durable consumer on the subject that is not a group of any bus
(an operator's own) is listed under its consumer name.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from nats.js.api import ConsumerInfo

from dotmac.events import GroupInfo

from .subjects import consumer_name, subject_for

if TYPE_CHECKING:
    from .transport import NatsTransport

__all__ = ["DESCRIPTION_PREFIX", "describe_group", "group_of", "list_groups", "list_topics"]

DESCRIPTION_PREFIX = "dotmac-events group "
# Groups recovered from a consumer name by trying '.' for each '_': at most 2**12 tries.
_MAX_GUESSES = 12


def describe_group(group: str, topic: str) -> str:
    """The description of a group's consumer; names hold no spaces, so it parses back."""
    return f"{DESCRIPTION_PREFIX}{group} topic {topic}"


def group_of(info: ConsumerInfo, topic: str) -> str:
    """The group whose consumer ``info`` is on ``topic``, else the consumer's name."""
    name = info.name
    described = info.config.description or ""
    if described.startswith(DESCRIPTION_PREFIX):
        group, _, rest = described[len(DESCRIPTION_PREFIX) :].partition(" topic ")
        if rest == topic and consumer_name(group, topic) == name:
            return group
    # Created without a description: the name is '<group>__<topic>' with every
    # character other than [A-Za-z0-9_-] as '_', then '_' and a hash of the pair.
    # Group names allow [A-Za-z0-9._-], so each '_' of the group part was '_' or '.'.
    readable, _, _digest = name.rpartition("_")
    tail = "__" + topic.replace(".", "_")
    if readable.endswith(tail):
        head = readable[: -len(tail)]
        spots = [i for i, c in enumerate(head) if c == "_"]
        if head and len(spots) <= _MAX_GUESSES:
            for dots in itertools.product("_.", repeat=len(spots)):
                chars = list(head)
                for i, c in zip(spots, dots, strict=True):
                    chars[i] = c
                candidate = "".join(chars)
                if consumer_name(candidate, topic) == name:
                    return candidate
    return name


async def _consumers(transport: NatsTransport) -> list[ConsumerInfo]:
    js = transport.jetstream
    stream = transport.config.stream
    found: list[ConsumerInfo] = []
    while True:  # the server answers in pages (256 consumers on NATS 2.9)
        page = await transport.api_call(
            js.consumers_info(stream, offset=len(found) or None), "list the stream's consumers"
        )
        found += page
        if not page:
            return found


async def list_groups(transport: NatsTransport, topic: str) -> list[GroupInfo]:
    subject = subject_for(transport.config.subject_prefix, topic)
    out: list[GroupInfo] = []
    for info in await _consumers(transport):
        config = info.config
        if not config.durable_name or config.filter_subject != subject:
            continue  # broadcast (ephemeral) consumers and other topics
        out.append(
            GroupInfo(
                topic=topic,
                group=group_of(info, topic),
                member_count=None,
                pending=info.num_ack_pending or 0,
                lag=info.num_pending,
            )
        )
    return sorted(out, key=lambda g: g.group)


async def list_topics(transport: NatsTransport) -> list[str]:
    """Topics with messages in the stream, and topics a group consumes."""
    js = transport.jetstream
    config = transport.config
    prefix = config.subject_prefix + "."
    info = await transport.api_call(
        js.stream_info(config.stream, subjects_filter=prefix + ">"), "list the stream's subjects"
    )
    subjects = set((info.state.subjects or {}).keys())
    for consumer in await _consumers(transport):
        if consumer.config.durable_name and consumer.config.filter_subject:
            subjects.add(consumer.config.filter_subject)
    return sorted(
        s[len(prefix) :] for s in subjects if s.startswith(prefix) and ">" not in s and "*" not in s
    )
