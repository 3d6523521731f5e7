"""The rotation agent: both ends agree on the PSK, the policy decides when inputs are
missing, and the channel refuses forged, swapped and replayed announces."""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from corridor.hybrid.policy import DecisionRecorder
from corridor.mobility.wireguard_agent import (
    ChannelError,
    Initiator,
    Responder,
    open_sealed,
    seal,
)
from tests.mobility.wg_fakes import FakeKmePair, ListSink, RecordingPeer, public_key


class Pair:
    def __init__(self, tmp_path: Path, policy: str, pqc: bool = True) -> None:
        self.kme = FakeKmePair()
        self.key = os.urandom(32)
        self.pub_i, self.pub_r = public_key(), public_key()
        self.peer_i, self.peer_r = RecordingPeer(), RecordingPeer()
        self.sink = ListSink()
        self.recorder = DecisionRecorder(self.sink)
        self.pqc_i, self.pqc_r = tmp_path / "pqc_i", tmp_path / "pqc_r"
        if pqc:
            secret = base64.b64encode(os.urandom(32)).decode() + "\n"
            self.pqc_i.write_text(secret)
            self.pqc_r.write_text(secret)
        common: dict[str, Any] = dict(kme=self.kme, channel_key=self.key, policy=policy,
                                      recorder=self.recorder)
        self.responder = Responder(master_sae_id="sae-a", peer=self.peer_r,
                                   own_public_key=self.pub_r, peer_public_key=self.pub_i,
                                   pqc_file=self.pqc_r, **common)
        self.stop, ready = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self.responder.serve,
                                       args=("127.0.0.1", 0, self.stop, ready), daemon=True)
        self.thread.start()
        assert ready.wait(5)
        self.initiator = Initiator(slave_sae_id="sae-b", peer=self.peer_i,
                                   responder_address=("127.0.0.1", self.responder.bound_port),
                                   own_public_key=self.pub_i, peer_public_key=self.pub_r,
                                   pqc_file=self.pqc_i, timeout_s=5, **common)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)

    def decisions(self) -> list[dict[str, Any]]:
        return [f for e, f in self.sink.events if e == "hybrid_decision"]


@pytest.fixture
def make_pair(tmp_path: Path):  # type: ignore[no-untyped-def]
    pairs: list[Pair] = []

    def make(policy: str, pqc: bool = True) -> Pair:
        pairs.append(Pair(tmp_path, policy, pqc))
        return pairs[-1]

    yield make
    for pair in pairs:
        pair.close()


def test_both_ends_set_the_same_fresh_psk(make_pair: Any) -> None:
    pair = make_pair("both-required")
    first = pair.initiator.rotate_once()
    second = pair.initiator.rotate_once()
    assert first.applied and second.applied and second.generation > first.generation
    assert pair.peer_i.history == pair.peer_r.history
    assert len(set(pair.peer_i.history)) == 2 and None not in pair.peer_i.history
    assert [d["inputs"] for d in pair.decisions()] == ["qkd+pqc"] * 4
    assert pair.recorder.registry.get_sample_value(
        "corridor_wireguard_psk_updates_total", {"role": "responder", "result": "set"}) == 2


def test_qkd_required_without_key_sets_random_psk_at_both_ends(make_pair: Any) -> None:
    pair = make_pair("qkd-required")
    pair.kme.empty = True
    result = pair.initiator.rotate_once()
    assert not result.applied and result.reason == "policy_refused"
    assert pair.peer_i.history == [None] and pair.peer_r.history == [None]
    outcomes = [(d["role"], d["outcome"], d["missing"]) for d in pair.decisions()]
    assert outcomes[0] == ("initiator", "refused", ["qkd:pool_empty"])
    assert outcomes[1][1] == "refused"


def test_pqc_required_without_qkd_uses_pqc_alone(make_pair: Any) -> None:
    pair = make_pair("pqc-required")
    pair.kme.down = True
    result = pair.initiator.rotate_once()
    assert result.applied and result.decision.inputs == ("pqc",)
    assert pair.peer_i.history == pair.peer_r.history and pair.peer_i.history[0] is not None
    assert pair.decisions()[0]["missing"] == ["qkd:kme_unreachable"]
    assert pair.decisions()[0]["outcome"] == "degraded"


def test_responder_without_announced_input_refuses(make_pair: Any) -> None:
    pair = make_pair("any")
    pair.pqc_r.unlink()  # the initiator will announce qkd+pqc
    result = pair.initiator.rotate_once()
    assert not result.applied and result.reason == "peer_inputs_mismatch"
    assert pair.peer_i.history == [None] and pair.peer_r.history == [None]


def test_unreachable_responder_makes_the_initiator_fail_closed(make_pair: Any) -> None:
    pair = make_pair("any")
    pair.close()
    pair.thread.join(5)
    result = pair.initiator.rotate_once()
    assert result.reason == "peer_unreachable" and pair.peer_i.history == [None]


def test_channel_refuses_forgery_swap_and_replay(make_pair: Any) -> None:
    pair = make_pair("qkd-required", pqc=False)
    key_id = pair.kme.get_key("sae-b")[0].key_id
    announce = {"type": "announce", "initiator": pair.pub_i, "responder": pair.pub_r,
                "generation": 10**9, "key_id": key_id, "inputs": ["qkd"],
                "timestamp_s": int(pair.initiator.clock())}
    line = seal(pair.key, announce)
    swapped = json.loads(line)
    swapped["key_id"] = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(ChannelError, match="bad_mac"):
        pair.responder.handle(json.dumps(swapped).encode())
    with pytest.raises(ChannelError, match="bad_mac"):
        pair.responder.handle(seal(os.urandom(32), announce))
    with pytest.raises(ChannelError, match="wrong_peers"):
        pair.responder.handle(seal(pair.key, {**announce, "initiator": public_key()}))
    with pytest.raises(ChannelError, match="clock_skew"):
        pair.responder.handle(seal(pair.key, {**announce, "timestamp_s": 0}))
    ack = open_sealed(pair.key, pair.responder.handle(line))
    assert ack["ok"] is True and ack["announce_mac"] == json.loads(line)["mac"]
    with pytest.raises(ChannelError, match="replayed_generation"):
        pair.responder.handle(line)
    assert pair.peer_r.history[0] is not None and len(pair.peer_r.history) == 1
