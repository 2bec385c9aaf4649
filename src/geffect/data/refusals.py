"""Refusal answers ("I don't know"-style) for IdkPO and IdkDPO, shipped as package data.

Each forget item gets one refusal, chosen deterministically from (item index, seed), so reruns and every
rank of a distributed run see the same pairing.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

RESOURCE = "refusals.txt"


@functools.cache
def _refusals() -> tuple[str, ...]:
    text = resources.files("geffect").joinpath("resources", RESOURCE).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def load_refusals() -> list[str]:
    """All refusal sentences, in file order."""
    return list(_refusals())


def refusal_for(index: int, seed: int = 0) -> str:
    """The refusal for item `index` under `seed`: a hash, not a random stream, so it does not depend on order."""
    refusals = _refusals()
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return refusals[int.from_bytes(digest[:8], "big") % len(refusals)]
