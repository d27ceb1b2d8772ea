"""The producer's key partitioner: the murmur2 mapping of every Kafka client, with the
hash of short keys cached (no broker needed)."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner

from dotmac_events_kafka import transport as transport_module
from dotmac_events_kafka.transport import partition_for_key


@pytest.mark.parametrize("partitions", [1, 2, 3, 7, 12, 64])
def test_a_key_gets_the_partition_of_the_default_partitioner(partitions: int) -> None:
    rng = random.Random(partitions)
    all_partitions = list(range(partitions))
    reference = DefaultPartitioner()
    limit = transport_module._HASHED_KEY_BYTES
    # Short keys (cached), keys at the limit and beyond it (hashed every time), arbitrary bytes.
    keys = [rng.randbytes(rng.choice([0, 1, 5, 13, limit, limit + 1, 300])) for _ in range(500)]
    keys += [f"customer-{n:04d}".encode() for n in range(64)]
    for _ in range(2):  # the second pass answers short keys from the cache
        for key in keys:
            assert partition_for_key(key, all_partitions, all_partitions) == reference(
                key, all_partitions, all_partitions
            ), key


def test_the_partition_list_decides_not_the_cache() -> None:
    # The cache holds the key's hash, never a partition: the same key maps afresh when
    # the topic gains partitions.
    key = b"order-7"
    for count in (3, 5, 3, 8):
        partitions = list(range(count))
        expected = DefaultPartitioner()(key, partitions, partitions)
        assert partition_for_key(key, partitions, partitions) == expected


def test_a_record_without_key_goes_to_an_available_partition() -> None:
    seen = {partition_for_key(None, [0, 1, 2], [1, 2]) for _ in range(200)}
    assert seen == {1, 2}
    assert partition_for_key(None, [0, 1, 2], []) in {0, 1, 2}
