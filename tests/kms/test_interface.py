"""Tests of the shared KMS types (``corridor.kms.interface``)."""

from __future__ import annotations

import dataclasses
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corridor.kms.interface import DeliveredKey, delivered_keys


@given(st.lists(st.tuples(st.text(max_size=40), st.binary(min_size=1, max_size=64)),
                max_size=20))
def test_delivered_keys_builds_what_the_constructor_builds(pairs: list[tuple[str, bytes]]
                                                           ) -> None:
    built = delivered_keys((key_id for key_id, _ in pairs), (key for _, key in pairs))
    expected = [DeliveredKey(key_id, key) for key_id, key in pairs]
    assert built == expected
    assert [type(item) for item in built] == [DeliveredKey] * len(pairs)
    assert [hash(item) for item in built] == [hash(item) for item in expected]
    assert [repr(item) for item in built] == [repr(item) for item in expected]


def test_a_delivered_key_stays_frozen_and_never_shows_its_bytes() -> None:
    secret = os.urandom(32)
    (key,) = delivered_keys(["0f1e2d3c-aaaa-8bbb-9ccc-000000000001"], [secret])
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.key = b"other"  # type: ignore[misc]
    assert secret.hex() not in repr(key) and repr(secret) not in repr(key)
    assert repr(key) == "DeliveredKey(key_id='0f1e2d3c-aaaa-8bbb-9ccc-000000000001', size_bits=256)"


def test_delivered_keys_refuses_ids_and_keys_of_different_lengths() -> None:
    with pytest.raises(ValueError):
        delivered_keys(["a", "b"], [b"k"])
