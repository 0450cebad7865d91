"""Seeds that every process derives alike from the same parts (unlike Python's `hash`)."""

from __future__ import annotations

import random


def derive_seed(*parts: object) -> int:
    """A 63-bit seed derived from `parts`; the same parts give the same seed in every process and run."""
    return random.Random(":".join(map(str, parts))).getrandbits(63)
