"""What building, encoding and decoding one event costs, without a transport.

Times the pieces of the hot path that the envelope owns, on the benchmark order
(``dotmac.events.bench``): building an ``Event`` (validation plus the read-only copy
of payload and headers), ``JsonCodec.encode`` with and without a ``null`` in the
payload (a ``null`` makes the codec look for NaN and infinities), ``bus.encode`` after
building (the publish side) and ``bus._decode`` (the consume side). Each figure is the
best of ``--rounds`` runs of ``--events`` events, in thread CPU time, so other load on
the machine moves it less than wall-clock time. Compare two commits by running the
script against each in turn, interleaved, e.g. with ``PYTHONPATH=<other>/core/src``.

    python benchmarks/envelope_cost.py --events 2000 --rounds 40
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from dotmac.events import Event, JsonCodec, create_bus
from dotmac.events.bench import HEADERS, order_payload


def best_of(rounds: int, events: int, work: Callable[[], object]) -> float:
    """The fastest round, in microseconds of thread CPU time per event."""
    best = float("inf")
    for _ in range(rounds):
        started = time.thread_time()
        work()
        best = min(best, time.thread_time() - started)
    return best / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()

    bus = create_bus("memory://envelope-cost")
    codec = JsonCodec()
    payloads = [order_payload(i) for i in range(args.events)]
    with_null: list[dict[str, Any]] = [{**p, "coupon": None} for p in payloads]

    def build(p: dict[str, Any]) -> Event:
        return Event(topic="orders", payload=p, key=p["customer_id"], headers=HEADERS)

    events = [build(p) for p in payloads]
    events_with_null = [build(p) for p in with_null]
    messages = [bus.encode(e) for e in events]
    cases: dict[str, Callable[[], object]] = {
        "Event() build": lambda: [build(p) for p in payloads],
        "JsonCodec.encode, no null": lambda: [codec.encode(e) for e in events],
        "JsonCodec.encode, one null": lambda: [codec.encode(e) for e in events_with_null],
        "publish side: Event() + bus.encode": lambda: [bus.encode(build(p)) for p in payloads],
        "consume side: bus._decode": lambda: [bus._decode(m) for m in messages],
    }
    for name, work in cases.items():
        print(f"{name:36s} {best_of(args.rounds, args.events, work):6.2f} us/event")


if __name__ == "__main__":
    main()
