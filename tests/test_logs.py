"""Tests of corridor.logs: the public field rule and redacting structured logs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from corridor.errors import ParameterError
from corridor.logs import (
    REDACTED,
    KeyMaterialRefused,
    check_public_fields,
    configure_logging,
    name_tokens,
    public_field_violation,
)

KEY = bytes(range(7, 39))  # a recognisable 32-byte "key"
KEY_HEX = KEY.hex()


@pytest.mark.parametrize(("name", "value"), [
    ("key", "abc"), ("keys", ["a"]), ("key_material", "x"), ("keyMaterial", "x"),
    ("secret", 1), ("kek", "x"), ("aes_key", "x"), ("key_b64", "x"), ("private_key", "x"),
    ("password", "x"), ("psk", "x"), ("key_bits", [0, 1, 1]), ("key_ids", [1, 2]),
    ("key_id", 5), ("key_size", "256"), ("note", KEY), ("note", bytearray(KEY)),
    ("note", memoryview(KEY)), ("note", np.zeros(4, dtype=np.uint8)), ("note", object()),
    ("nested", {"key": "x"}), ("nested", [{"secret": "x"}]), ("nested", [KEY]),
    ("qber", float("nan")), ("", 1), ("private_key_pem", "x"), ("key_id_list", [1]),
    ("secret_key_rate_bits_per_pulse", "0.1"),
])
def test_refused_fields(name: str, value: object) -> None:
    assert public_field_violation(name, value) is not None
    with pytest.raises(KeyMaterialRefused) as info:
        check_public_fields({name: value})
    assert KEY_HEX not in str(info.value) and repr(KEY) not in str(info.value)


@pytest.mark.parametrize(("name", "value"), [
    ("key_id", "0b9e8c4e-1d5a-4a3e-9a51-2f9e7d6c5b4a"), ("key_ids", ["a", "b"]),
    ("key_ID", "a"), ("keyId", "a"), ("size_bits", 256), ("key_size", 256),
    ("stored_key_count", 3), ("max_key_count", 10), ("secret_bits", 4096),
    ("kme_id", "kme-a"), ("qber", 0.02), ("count", np.int64(3)), ("direction", "a_to_b"),
    ("reason", None), ("latched", True), ("fields", {"kme_id": "a", "n": [1, 2]}),
    ("secret_key_rate_bits_per_pulse", 1e-4), ("pessimistic_key_bits", 1000),
    ("verification_collision_probability", 1e-30),
])
def test_public_fields_pass(name: str, value: object) -> None:
    assert public_field_violation(name, value) is None
    check_public_fields({name: value})


def test_name_tokens_split_camel_case_and_separators() -> None:
    assert name_tokens("keyMaterial_b64") == ["key", "material", "b64"]
    assert name_tokens("master-SAE.ID") == ["master", "sae", "id"]


@given(st.binary(min_size=1, max_size=64), st.from_regex(r"[a-z_]{1,20}", fullmatch=True))
def test_any_bytes_value_is_refused_whatever_the_name(value: bytes, name: str) -> None:
    assert public_field_violation(name, value) is not None


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    old_level = root.level
    configure_logging("debug", json=True, stream=stream)
    yield stream
    for handler in [h for h in root.handlers if h.get_name() == "corridor"]:
        root.removeHandler(handler)
    root.setLevel(old_level)


def test_json_lines_with_extras(captured: io.StringIO) -> None:
    logging.getLogger("corridor.test").info("delivered %d keys", 2,
                                            extra={"kme_id": "kme-a", "count": 2})
    record = json.loads(captured.getvalue().strip())
    assert record["message"] == "delivered 2 keys"
    assert record["level"] == "info" and record["logger"] == "corridor.test"
    assert record["kme_id"] == "kme-a" and record["count"] == 2
    assert record["time"].endswith("Z")


def test_key_never_reaches_the_output(captured: io.StringIO) -> None:
    log = logging.getLogger("corridor.test")
    log.info("a %s b", KEY)
    log.info(KEY)
    log.info("fields", extra={"key": KEY_HEX, "key_material": KEY, "secret": KEY_HEX,
                              "note": KEY, "key_ids": ["id-1"]})
    log.info("mapping %(key)s", {"key": KEY})
    out = captured.getvalue()
    assert KEY_HEX not in out and repr(KEY) not in out and KEY.decode("latin-1") not in out
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert len(lines) == 4
    assert lines[2]["key"] == REDACTED and lines[2]["key_material"] == REDACTED
    assert lines[2]["secret"] == REDACTED and lines[2]["note"] == REDACTED
    assert lines[2]["key_ids"] == ["id-1"]
    assert REDACTED in lines[0]["message"] and lines[1]["message"] == REDACTED


def test_configure_twice_does_not_double_lines(captured: io.StringIO) -> None:
    stream = io.StringIO()
    configure_logging("info", json=False, stream=stream)
    logging.getLogger("corridor.test").info("once", extra={"kme_id": "kme-a"})
    assert stream.getvalue().count("once") == 1
    assert "kme_id=kme-a" in stream.getvalue()
    assert captured.getvalue() == ""  # the first handler was replaced


@pytest.mark.parametrize("level", ["loud", -1, 1.5, True])
def test_bad_level_names_the_field(level: object) -> None:
    with pytest.raises(ParameterError, match="level"):
        configure_logging(level, json=True)  # type: ignore[arg-type]


_PLAIN_ITEMS = st.one_of(st.text(max_size=40), st.integers(), st.booleans(), st.none())
_NON_PUBLIC_ITEMS = st.one_of(st.binary(min_size=1, max_size=32), st.just(float("nan")),
                              st.just(np.zeros(2, dtype=np.uint8)), st.just(object()))


@given(st.lists(_PLAIN_ITEMS, max_size=300), st.data())
def test_long_lists_are_checked_item_by_item_even_on_the_fast_path(items, data) -> None:
    # Lists of plain items (the key IDs and byte offsets of a large delivery) take a
    # one-pass check of their types; one non-public item anywhere must still be found.
    assert public_field_violation("byte_offsets", items) is None
    assert public_field_violation("notes", tuple(items)) is None
    bad = data.draw(_NON_PUBLIC_ITEMS)
    position = data.draw(st.integers(0, len(items)))
    mixed = [*items[:position], bad, *items[position:]]
    found = public_field_violation("notes", mixed)
    assert found is not None and found[0] == f"notes[{position}]"
