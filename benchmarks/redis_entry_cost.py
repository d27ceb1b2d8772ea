"""What the Redis transport's own per-event client work costs, without a server.

Times the pieces of the Redis hot path that the plugin owns, on the benchmark order
(``dotmac.events.bench``) as the bus encodes it: the ``XADD`` field list of an entry,
the same plus packing a ``publish_many`` batch into its one script call, and reading
a batch back: parsing an ``XREADGROUP`` reply with hiredis and turning its entries
into messages. Each figure is the best of ``--rounds`` runs over ``--events``
events, in thread CPU time (see ``envelope_cost.py``). Compare two commits by
running the script against each in turn, interleaved, e.g. with
``PYTHONPATH=<other>/plugins/redis/src``.

    python benchmarks/redis_entry_cost.py --events 500 --rounds 40
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import hiredis
from envelope_cost import best_of

from dotmac.events import Event, create_bus
from dotmac.events.bench import HEADERS, order_payload
from dotmac_events_redis._common import entry_fields, entry_message
from dotmac_events_redis._connection import _pack


def reply(fields: list[list[Any]]) -> bytes:
    """The RESP2 bytes of an ``XREADGROUP`` reply holding these entries of stream ``k``
    (``str`` fields as UTF-8, as the packer writes them)."""
    fields = [[f.encode() if isinstance(f, str) else f for f in entry] for entry in fields]
    out = [b"*1\r\n*2\r\n$1\r\nk\r\n*%d\r\n" % len(fields)]
    for seq, entry in enumerate(fields):
        entry_id = b"1764570000000-%d" % seq
        out.append(b"*2\r\n$%d\r\n%s\r\n*%d\r\n" % (len(entry_id), entry_id, len(entry)))
        out += [b"$%d\r\n%s\r\n" % (len(value), value) for value in entry]
    return b"".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()

    bus = create_bus("memory://redis-entry-cost")
    messages = [
        bus.encode(Event(topic="orders", payload=p, key=p["customer_id"], headers=HEADERS))
        for p in (order_payload(i) for i in range(args.events))
    ]
    data = reply([entry_fields(m) for m in messages])

    def publish_call() -> bytes:
        script_args: list[Any] = ["EVALSHA", "0" * 40, 1, "k", 0]
        for message in messages:
            fields = entry_fields(message)
            script_args.append(len(fields))
            script_args.extend(fields)
        return _pack(script_args)

    def read_back() -> list[object]:
        parser = hiredis.Reader()
        parser.feed(data)
        ((_stream, entries),) = parser.gets()
        return [entry_message("orders", entry_id, fields) for entry_id, fields in entries]

    cases: dict[str, Callable[[], object]] = {
        "publish: entry fields": lambda: [entry_fields(m) for m in messages],
        "publish: fields + packed batch": publish_call,
        "consume: reply parsed + messages": read_back,
    }
    for name, work in cases.items():
        print(f"{name:36s} {best_of(args.rounds, args.events, work):6.2f} us/event")


if __name__ == "__main__":
    main()
