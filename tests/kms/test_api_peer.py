"""The KME-to-KME wire form: reservations grouped into runs, and expanded back."""

from __future__ import annotations

import uuid

from corridor.kms.api import ReservationAnnouncement, _as_runs
from corridor.kms.interface import Reservation


def _res(offset: int, length: int = 32, master: str = "a1",
         slaves: tuple[str, ...] = ("b1",), direction: str = "A->B") -> Reservation:
    return Reservation(str(uuid.uuid4()), "link-ab", direction, offset, length, master, slaves)


def _expand(runs: list[dict]) -> list[Reservation]:
    announcement = ReservationAnnouncement.model_validate({"runs": runs})
    return [Reservation(key_id, run.link_id, run.direction,
                        run.byte_offset + i * run.length_bytes, run.length_bytes,
                        run.master_sae_id, tuple(run.slave_sae_ids))
            for run in announcement.runs for i, key_id in enumerate(run.key_ids)]


def test_consecutive_reservations_of_one_kind_become_one_run_and_expand_back():
    batch = [_res(o) for o in range(0, 3200, 32)]
    runs = _as_runs(batch)
    assert len(runs) == 1 and len(runs[0]["key_ids"]) == 100
    assert _expand(runs) == batch


def test_a_gap_or_a_change_of_size_sae_or_direction_starts_a_new_run():
    batch = [_res(0), _res(32), _res(96),                 # gap at 64
             _res(128, length=16), _res(144, length=16),  # other size
             _res(160, length=16, slaves=("b1", "b2")),   # other slaves
             _res(176, length=16, master="a2"),           # other master
             _res(192, length=16, direction="B->A")]      # other direction
    runs = _as_runs(batch)
    assert [len(run["key_ids"]) for run in runs] == [2, 1, 2, 1, 1, 1]
    assert _expand(runs) == batch
    assert _as_runs([]) == []


def test_the_per_key_form_is_still_accepted():
    res = _res(64)
    announcement = ReservationAnnouncement.model_validate({"reservations": [{
        "key_id": res.key_id, "link_id": res.link_id, "direction": res.direction,
        "byte_offset": 64, "length_bytes": 32, "master_sae_id": "a1",
        "slave_sae_ids": ["b1"]}]})
    assert announcement.runs == [] and announcement.reservations[0].key_id == res.key_id
