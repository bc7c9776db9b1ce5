"""The blob service's SHA-256, whose running state an upload saves so another replica can continue it."""

from __future__ import annotations

import hashlib
import random

import pytest

from mreg.blob_service import sha256
from mreg.blob_service.sha256 import Sha256, StateRefused

pytestmark = pytest.mark.unit


def test_it_hashes_as_hashlib_does_whatever_the_pieces_and_their_types() -> None:
    rng = random.Random(7)
    data = rng.randbytes(300_000)
    for _ in range(20):
        hasher, position = Sha256(), 0
        while position < len(data):
            step = rng.choice([0, 1, 63, 64, 65, 4096, 70_000])
            piece = data[position : position + step]
            hasher.update(rng.choice([bytes, bytearray, memoryview])(piece))
            position += step
        assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert Sha256().hexdigest() == hashlib.sha256(b"").hexdigest()


@pytest.mark.skipif(not sha256.resumable, reason="this build's C library offers no SHA256_CTX")
def test_a_saved_state_continues_where_it_stopped_even_mid_block() -> None:
    data = random.Random(3).randbytes(10_000)
    for cut in (0, 1, 55, 64, 100, 9_999, 10_000):
        first = Sha256()
        first.update(data[:cut])
        state = first.state()
        assert state is not None
        continued = Sha256.restore(state)
        continued.update(data[cut:])
        assert continued.hexdigest() == hashlib.sha256(data).hexdigest()
        # Reading the digest does not end the hashing.
        first.update(data[cut:])
        assert first.hexdigest() == continued.hexdigest()


@pytest.mark.skipif(not sha256.resumable, reason="this build's C library offers no SHA256_CTX")
def test_a_state_of_another_layout_or_damaged_is_refused_not_misread() -> None:
    hasher = Sha256()
    hasher.update(b"abc" * 100)
    state = hasher.state()
    assert state is not None
    raw = state.partition(b":")[2]
    with pytest.raises(StateRefused):
        Sha256.restore(b"sha256-ctx-v0-other:" + raw)
    with pytest.raises(StateRefused):
        Sha256.restore(state[:-1])
    damaged = bytearray(state)
    damaged[-4:] = (99).to_bytes(4, "little")  # md_len, which is 32 for SHA-256
    with pytest.raises(StateRefused):
        Sha256.restore(bytes(damaged))
