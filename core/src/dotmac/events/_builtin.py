"""Builtin plugin: the JSON codec and the default retry policies.

Registered through the same hooks as third-party plugins (see ``DEFAULT_PLUGINS``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .codec import JsonCodec, RawCodec
from .plugins import hookimpl
from .registry import CodecSpec
from .retry import ExponentialBackoff, FixedDelay, NoRetry, RetryPolicy

if TYPE_CHECKING:
    from .options import ConsumerOptions
    from .registry import Registry


def _none(options: ConsumerOptions) -> RetryPolicy:
    return NoRetry()


def _fixed(options: ConsumerOptions) -> RetryPolicy:
    return FixedDelay(max_retries=options.max_retries, delay=options.backoff_base_ms / 1000)


def _exponential(options: ConsumerOptions) -> RetryPolicy:
    return ExponentialBackoff(
        max_retries=options.max_retries,
        initial=options.backoff_base_ms / 1000,
        max_delay=options.backoff_max_ms / 1000,
        jitter=options.jitter,
    )


@hookimpl
def dotmac_events_register_codecs(register: Registry) -> None:
    register.add_codec(
        CodecSpec(
            name="json",
            content_type=JsonCodec.content_type,
            factory=JsonCodec,
            description="compact UTF-8 JSON with sorted keys (orjson)",
        )
    )
    register.add_codec(
        CodecSpec(
            name="raw",
            content_type=RawCodec.content_type,
            factory=RawCodec,
            description="the body as bytes, unparsed (payload is bytes)",
        )
    )


@hookimpl
def dotmac_events_register_retry_policies(register: Registry) -> None:
    register.add_retry_policy("none", _none)
    register.add_retry_policy("fixed", _fixed)
    register.add_retry_policy("exponential", _exponential)
