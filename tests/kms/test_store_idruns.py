"""Key-ID runs: recognising a run, splitting IDs, the bitmap of keys still owed."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from corridor.kms import store_idruns as idruns
from corridor.kms.store import new_key_ids


@given(st.integers(min_value=1, max_value=300))
def test_new_key_ids_form_a_run_and_split_back(count):
    ids = new_key_ids(count)
    head, first = idruns.as_run(ids)
    assert idruns.ids_of(head, first, count) == ids
    assert [idruns.split_id(k) for k in ids] == [(head, first + i) for i in range(count)]


def test_ids_that_are_not_one_run_in_order_are_refused():
    ids = new_key_ids(4)
    assert idruns.as_run([]) is None
    assert idruns.as_run([ids[0], ids[2]]) is None          # a gap
    assert idruns.as_run([ids[1], ids[0]]) is None          # out of order
    assert idruns.as_run([ids[0], new_key_ids(1)[0]]) is None  # another head
    lettered = ids[0][:28] + "0000abcd"
    assert idruns.as_run([lettered]) == (ids[0][:28], 0xABCD)
    assert idruns.as_run([lettered.upper()]) is None         # not as new_key_ids writes it
    # a counter that would pass 2**32 is no run (the next ID would have 9 digits)
    top = ids[0][:28] + "ffffffff"
    assert idruns.as_run([top]) == (ids[0][:28], 0xFFFFFFFF)
    assert idruns.as_run([top, ids[0][:28] + "100000000"]) is None


def test_split_id_takes_only_the_exact_lower_case_counter():
    key_id = str(uuid.uuid4())
    assert idruns.split_id(key_id[:28] + "0000002a") == (key_id[:28], 42)
    for tail in ("0000002A", "+000002a", " 000002a", "0x00002a", "0000002"):
        assert idruns.split_id(key_id[:28] + tail) is None


@given(st.integers(min_value=1, max_value=70), st.data())
def test_the_bitmap_tracks_exactly_the_keys_still_owed(count, data):
    bitmap = idruns.full_bitmap(count)
    assert len(bitmap) == (count + 7) // 8
    assert idruns.owed(bitmap, count) == list(range(count))
    gone = data.draw(st.sets(st.integers(min_value=0, max_value=count - 1)))
    idruns.clear(bitmap, gone)
    assert idruns.owed(bitmap, count) == [i for i in range(count) if i not in gone]
    assert all(idruns.is_set(bitmap, i) == (i not in gone) for i in range(count))


def test_group_by_head_keeps_the_order_given_and_skips_other_ids():
    first, second = new_key_ids(3), new_key_ids(2)
    plain = str(uuid.uuid4())
    plain = plain[:28] + "XYZ00000"  # not hexadecimal: no run form
    mixed = [second[1], first[2], plain, first[0], second[0]]
    groups = idruns.group_by_head(mixed)
    assert groups == {
        second[0][:28]: ([second[1], second[0]], [idruns.split_id(k)[1] for k in
                                                  (second[1], second[0])]),
        first[0][:28]: ([first[2], first[0]], [idruns.split_id(k)[1] for k in
                                               (first[2], first[0])]),
    }
    head, start = idruns.as_run(first)
    assert idruns.group_by_head(first) == {head: (first, [start, start + 1, start + 2])}
