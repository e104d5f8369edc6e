"""Prediction ids: time-ordered UUIDs (version 7, RFC 9562), so an id tells when it was issued.

The first 48 bits are the Unix time in milliseconds, then the version, 12 random bits, the variant and
62 random bits. Two uses: the log's primary key grows in time order (index pages fill at the end instead
of at random places), and ``POST /feedback`` can tell an id older than the archive's cutoff (archived:
410) from one that was never issued (404) without looking the archive up.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Final

_RANDOM_BYTES: Final = 10  # 12 + 62 random bits, drawn as 80 and masked


def time_ordered_ids(count: int, unix_ms: int) -> list[str]:
    """``count`` UUIDv7 strings stamped ``unix_ms`` (one ``os.urandom`` call for all of them)."""
    stamp = unix_ms & 0xFFFF_FFFF_FFFF
    head = f"{stamp >> 16:08x}-{stamp & 0xFFFF:04x}-7"
    random = os.urandom(_RANDOM_BYTES * count)
    ids = []
    for offset in range(0, len(random), _RANDOM_BYTES):
        bits = int.from_bytes(random[offset : offset + _RANDOM_BYTES], "big")
        rand_a = bits >> 68  # 12 bits
        rand_b = bits & ((1 << 62) - 1)  # 62 bits
        variant_b = (0b10 << 62) | rand_b
        ids.append(f"{head}{rand_a:03x}-{variant_b >> 48:04x}-{variant_b & 0xFFFF_FFFF_FFFF:012x}")
    return ids


def issued_at(prediction_id: str) -> datetime | None:
    """When a UUIDv7 id was issued (millisecond precision); None for any other string (a v4 id, a typo)."""
    hexa = prediction_id.replace("-", "")
    if (
        len(prediction_id) != 36
        or len(hexa) != 32
        or [len(part) for part in prediction_id.split("-")] != [8, 4, 4, 4, 12]
        or hexa[12] != "7"
        or hexa[16] not in "89ab"
    ):
        return None
    try:
        stamp = int(hexa[:12], 16)
        int(hexa, 16)
    except ValueError:
        return None
    return datetime.fromtimestamp(stamp / 1000, tz=UTC)
