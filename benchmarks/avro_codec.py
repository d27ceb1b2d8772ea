"""Encode/decode throughput of the Avro codec against the JSON codec and bare fastavro.

All contenders run in one process on the same payload, rounds interleaved so that
machine noise hits them alike; the median of the rounds is reported with ratios:

- ``json``: the core's :class:`~dotmac.events.JsonCodec` (orjson).
- ``avro``: :class:`~dotmac_events_avro.AvroCodec` (payload check + fastavro +
  Confluent framing; schema id cached after the first event).
- ``fastavro``: ``schemaless_writer``/``schemaless_reader`` called directly with a
  parsed schema, no check, no framing: the floor the codec builds on.
- ``avro+reader``: decoding with a newer reader schema (schema resolution).

    python benchmarks/avro_codec.py                 # 50,000 events, 5 rounds
    python benchmarks/avro_codec.py -n 200000 --rounds 7
    python benchmarks/avro_codec.py --smoke         # quick, for CI: numbers mean nothing
    python benchmarks/avro_codec.py --json
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import fastavro
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from dotmac.events import Event, JsonCodec
from dotmac_events_avro import AvroCodec, InMemorySchemaRegistry

SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Order",
    "namespace": "bench",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID", "SHIPPED"]}},
        {
            "name": "customer",
            "type": {
                "type": "record",
                "name": "Customer",
                "fields": [
                    {"name": "name", "type": "string"},
                    {"name": "email", "type": ["null", "string"], "default": None},
                    {"name": "vip", "type": "boolean"},
                ],
            },
        },
        {
            "name": "lines",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "Line",
                    "fields": [
                        {"name": "sku", "type": "string"},
                        {"name": "qty", "type": "int"},
                        {"name": "price", "type": "double"},
                    ],
                },
            },
        },
        {"name": "tags", "type": {"type": "map", "values": "string"}},
        {"name": "total", "type": "double"},
        {"name": "placed_at", "type": "string"},
    ],
}
READER: dict[str, Any] = {
    **SCHEMA,
    "fields": [*SCHEMA["fields"], {"name": "channel", "type": "string", "default": "web"}],
}

PAYLOAD: dict[str, Any] = {
    "id": 1234567,
    "status": "PAID",
    "customer": {"name": "Zoë Martin", "email": "zoe@example.org", "vip": False},
    "lines": [
        {"sku": "SKU-0001", "qty": 2, "price": 19.99},
        {"sku": "SKU-0042", "qty": 1, "price": 249.0},
        {"sku": "SKU-1337", "qty": 5, "price": 3.5},
    ],
    "tags": {"source": "checkout", "campaign": "spring"},
    "total": 306.48,
    "placed_at": "2026-05-17T09:30:15.250Z",
}


def build() -> dict[str, tuple[Callable[[], Any], Callable[[], Any], int]]:
    """name -> (encode once, decode once, encoded size)."""
    event = Event(topic="orders", payload=PAYLOAD)
    headers = {"ce_type": "orders"}

    json_codec = JsonCodec()
    json_bytes = json_codec.encode(event)

    registry = InMemorySchemaRegistry()
    avro = AvroCodec(schemas={"orders": SCHEMA}, registry=registry)
    avro_bytes = avro.encode(event)
    reader = AvroCodec(schemas={"orders": READER}, registry=registry)

    parsed = parse_schema(SCHEMA)
    out = io.BytesIO()
    schemaless_writer(out, parsed, PAYLOAD)
    raw = out.getvalue()

    def fast_encode() -> bytes:
        buffer = io.BytesIO()
        schemaless_writer(buffer, parsed, PAYLOAD)
        return buffer.getvalue()

    def fast_decode() -> Any:
        return schemaless_reader(io.BytesIO(raw), parsed)

    # Every contender must give back the same payload, or the comparison means nothing.
    assert json_codec.decode(json_bytes, topic="orders", headers=headers) == PAYLOAD
    assert avro.decode(avro_bytes, topic="orders", headers=headers) == PAYLOAD
    assert fast_decode() == PAYLOAD
    assert reader.decode(avro_bytes, topic="orders", headers=headers) == {**PAYLOAD, "channel": "web"}

    return {
        "json": (
            lambda: json_codec.encode(event),
            lambda: json_codec.decode(json_bytes, topic="orders", headers=headers),
            len(json_bytes),
        ),
        "avro": (
            lambda: avro.encode(event),
            lambda: avro.decode(avro_bytes, topic="orders", headers=headers),
            len(avro_bytes),
        ),
        "fastavro": (fast_encode, fast_decode, len(raw)),
        "avro+reader": (
            lambda: reader.encode(event),
            lambda: reader.decode(avro_bytes, topic="orders", headers=headers),
            len(avro_bytes),
        ),
    }


def rate(fn: Callable[[], Any], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=50_000, help="operations per contender and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny run that only proves the script works")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args(argv)
    n, rounds = (500, 1) if args.smoke else (args.n, args.rounds)

    contenders = build()
    samples: dict[tuple[str, str], list[float]] = {}
    for encode, decode, _ in contenders.values():  # warm-up: caches, allocator
        rate(encode, min(n, 2000))
        rate(decode, min(n, 2000))
    for _ in range(rounds):
        for name, (encode, decode, _) in contenders.items():
            samples.setdefault((name, "encode"), []).append(rate(encode, n))
            samples.setdefault((name, "decode"), []).append(rate(decode, n))
    median = {key: statistics.median(values) for key, values in samples.items()}

    results = {
        name: {
            "bytes": size,
            "encode_per_s": round(median[(name, "encode")]),
            "decode_per_s": round(median[(name, "decode")]),
        }
        for name, (_, _, size) in contenders.items()
    }
    ratios = {
        f"avro/{base}": {
            op: round(median[("avro", op)] / median[(base, op)], 3) for op in ("encode", "decode")
        }
        for base in ("json", "fastavro")
    }
    if args.json:
        print(json.dumps({"n": n, "rounds": rounds, "results": results, "ratios": ratios}, indent=2))
        return 0

    print(
        f"Avro codec benchmark: {n:,} ops x {rounds} rounds (median), "
        f"Python {platform.python_version()}, fastavro {fastavro.__version__}"
    )
    print(f"{'contender':<13}{'bytes':>7}{'encode/s':>13}{'µs/encode':>11}{'decode/s':>13}{'µs/decode':>11}")
    for name, row in results.items():
        enc, dec = row["encode_per_s"], row["decode_per_s"]
        print(f"{name:<13}{row['bytes']:>7}{enc:>13,}{1e6 / enc:>11.2f}{dec:>13,}{1e6 / dec:>11.2f}")
    for label, values in ratios.items():
        print(f"ratio {label:<14} encode {values['encode']:.2f}x   decode {values['decode']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
