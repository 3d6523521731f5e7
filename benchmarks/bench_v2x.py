"""V2X signatures: sign and verify per second per scheme, on 1 and 2 cores (issue 11).

For each scheme (ECDSA P-256, ML-DSA-44, hybrid; FN-DSA-512 is absent, docs/v2x.md):

- ``sign_per_s``: :func:`corridor.mobility.v2x.messages.sign_message` for an 86-byte CAM
  payload (build the header, OER-encode ToBeSignedData, hash, sign, encode the message);
- ``verify_cached_per_s``: :meth:`RsuVerifier.verify` of CAMs that carry the signer's
  certificate, with the certificate cache on (the certificate's issuer signature is
  checked once, then every message costs decoding, the checks and one signature);
- ``verify_digest_per_s``: CAMs that name their signer by digest (what most CAMs carry;
  the certificate comes about once a second), resolved from the certificate cache;
- ``verify_uncached_per_s``: the same messages with the cache off (the issuer signature
  is checked for every message: two signature verifications each);
- ``signature_only_verify_per_s``: the signature check alone (no decoding), the ceiling.

Each figure is one process running for ``--seconds`` on pre-built messages (building them
is not timed), and then two processes at once (``workers = 2``, the sum of both; each with
its own keys and verifier, as two RSU verification workers would run). Prints one JSON
object; ``meets_3500_per_s`` says, per scheme, which of the verification figures reach
3,500/s on 2 cores.

    .venv/bin/python benchmarks/bench_v2x.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import time
from typing import Any

TARGET_VERIFY_PER_S = 3500


def _rate(func: Any, items: list[Any], seconds: float) -> float:
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for item in items:
            func(item)
            done += 1
            if done % 16 == 0 and time.perf_counter() >= deadline:
                return done / (time.perf_counter() - start)


def _one(args: tuple[str, float]) -> dict[str, float]:
    from corridor.mobility.v2x.certificates import PSID_CAM, Authority
    from corridor.mobility.v2x.encoding import decode_data, encode_tbs_data
    from corridor.mobility.v2x.messages import SignerKind, sign_message
    from corridor.mobility.v2x.signing import Scheme, signature_input
    from corridor.mobility.v2x.verifier import RsuVerifier

    scheme_name, seconds = args
    scheme = Scheme(scheme_name)
    now = time.time()
    authority = Authority(scheme, start_unix_s=now - 60)
    ticket = authority.issue(scheme, psids=(PSID_CAM,), start_unix_s=now - 60)
    count = 4000 if scheme is Scheme.ecdsa else 1500
    messages = [sign_message(i.to_bytes(4, "big") + bytes(82), psid=PSID_CAM, ticket=ticket,
                             generation_unix_s=now, signer=SignerKind.certificate)
                for i in range(count)]
    digest_messages = [sign_message(i.to_bytes(4, "big") + bytes(82), psid=PSID_CAM,
                                    ticket=ticket, generation_unix_s=now)
                       for i in range(count)]
    out: dict[str, float] = {}
    out["sign_per_s"] = _rate(lambda i: sign_message(
        i.to_bytes(4, "big") + bytes(82), psid=PSID_CAM, ticket=ticket,
        generation_unix_s=now), list(range(count)), seconds)
    primer = sign_message(b"primer", psid=PSID_CAM, ticket=ticket, generation_unix_s=now,
                          signer=SignerKind.certificate)
    for label, cached, batch in (("verify_cached_per_s", True, messages),
                                 ("verify_digest_per_s", True, digest_messages),
                                 ("verify_uncached_per_s", False, messages)):
        # a fresh verifier per pass over the messages, so the duplicate cache never refuses;
        # it sees the signer's certificate once first (not timed apart: once per pass)
        state: dict[str, Any] = {"verifier": None, "n": 0}

        def verify(data: bytes, cached: bool = cached, state: dict[str, Any] = state) -> None:
            if state["n"] % count == 0:
                state["verifier"] = RsuVerifier([authority.encoded], max_message_bytes=1 << 16,
                                                window_s=3600.0, use_certificate_cache=cached)
                state["verifier"].verify(primer, now_unix_s=now)
            state["n"] += 1
            state["verifier"].verify(data, now_unix_s=now)

        out[label] = _rate(verify, batch, seconds)
    key = ticket.key.public()
    signed = [decode_data(m)["content"][1] for m in messages[:200]]
    inputs = [(s["signature"], signature_input(encode_tbs_data(s["tbsData"]), ticket.encoded))
              for s in signed]

    def check(item: tuple[Any, bytes]) -> None:
        if not key.verify(*item):
            raise AssertionError("a genuine signature did not verify")

    out["signature_only_verify_per_s"] = _rate(check, inputs, seconds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    from corridor.mobility.v2x.signing import Scheme

    results: dict[str, Any] = {}
    context = multiprocessing.get_context("spawn")
    for scheme in Scheme:
        per_scheme: dict[str, Any] = {}
        for workers in (1, 2):
            with context.Pool(workers) as pool:
                parts = pool.map(_one, [(scheme.value, args.seconds)] * workers)
            per_scheme[f"workers_{workers}"] = {
                key: round(sum(p[key] for p in parts)) for key in parts[0]}
        results[scheme.value] = per_scheme
    meets = {name: {kind: r["workers_2"][kind] >= TARGET_VERIFY_PER_S
                    for kind in ("verify_cached_per_s", "verify_digest_per_s",
                                 "signature_only_verify_per_s")}
             for name, r in results.items()}
    print(json.dumps({
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "load_average": os.getloadavg()[0], "cpus": os.cpu_count(),
        "seconds_per_figure": args.seconds, "fn_dsa_512": "absent (no maintained PyPI package)",
        "results": results, "target_verify_per_s": TARGET_VERIFY_PER_S,
        "meets_3500_per_s": meets}, indent=2))


if __name__ == "__main__":
    main()
