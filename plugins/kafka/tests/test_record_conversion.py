"""A consumed record as a Message: the fast paths of ``record_to_message`` (headers
decoded in one pass, the timestamp of the previous record reused) give what the
general conversion gives, for any headers and any sequence of timestamps."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dotmac.events.wire import headers_from_pairs
from dotmac_events_kafka.transport import record_to_message

_names = st.sampled_from(["ce_id", "ce_type", "content-type", "x-a", "\udcff"]) | st.text(max_size=4)
_values = st.none() | st.binary(max_size=8) | st.sampled_from([b"\xff\xfe", "é".encode(), b""])
_millis = st.sampled_from([None, -1, 0, 1_700_000_000_000, 1_700_000_000_001]) | st.integers(
    min_value=-(10**18), max_value=10**18
)


def _general(record: Any) -> tuple[dict[str, str], datetime | None]:
    """The conversion spelled out, without a fast path."""

    def text(value: bytes | None) -> str:
        return value.decode("utf-8", "surrogateescape") if value is not None else ""

    headers = headers_from_pairs((name, text(value)) for name, value in record.headers)
    millis = record.timestamp
    if millis is None or millis < 0:
        return headers, None
    try:
        return headers, datetime.fromtimestamp(millis / 1000, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return headers, None


def _record(headers: list[tuple[str, bytes | None]], millis: int | None, offset: int) -> Any:
    return SimpleNamespace(
        topic="t", partition=1, offset=offset, key=b"k", value=b"v", headers=headers, timestamp=millis
    )


@given(st.lists(st.tuples(st.lists(st.tuples(_names, _values), max_size=5), _millis), min_size=1, max_size=6))
def test_record_to_message_matches_the_general_conversion(
    records: list[tuple[list[tuple[str, bytes | None]], int | None]],
) -> None:
    for offset, (headers, millis) in enumerate(records):
        record = _record(headers, millis, offset)
        message = record_to_message(record)
        want_headers, want_time = _general(record)
        assert dict(message.headers) == dict(want_headers)
        # A name repeated with different values stays marked for the core to refuse.
        assert getattr(message.headers, "conflicts", ()) == getattr(want_headers, "conflicts", ())
        assert message.timestamp == want_time
        assert message.position == f"1:{offset}"


def test_a_header_without_value_reads_as_empty_text() -> None:
    message = record_to_message(_record([("a", b"1"), ("b", None)], 5, 0))
    assert dict(message.headers) == {"a": "1", "b": ""}


def test_consecutive_records_of_one_millisecond_share_the_converted_time() -> None:
    first = record_to_message(_record([], 1_700_000_000_123, 0))
    second = record_to_message(_record([], 1_700_000_000_123, 1))
    assert first.timestamp == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=timezone.utc)
    assert second.timestamp is first.timestamp
    assert record_to_message(_record([], -1, 2)).timestamp is None
    assert record_to_message(_record([], None, 3)).timestamp is None
