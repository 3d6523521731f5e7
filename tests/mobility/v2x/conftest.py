"""Shared fixtures for the V2X tests: authorities and tickets per scheme (key generation
is the slow part, so they are made once per session)."""

from __future__ import annotations

import time

import pytest

from corridor.mobility.v2x.certificates import PSID_CAM, PSID_DENM, Authority, Ticket
from corridor.mobility.v2x.signing import Scheme

NOW = time.time()


@pytest.fixture(scope="session")
def pki() -> dict[Scheme, tuple[Authority, Ticket]]:
    out = {}
    for scheme in Scheme:
        authority = Authority(scheme, start_unix_s=NOW - 60)
        out[scheme] = (authority, authority.issue(scheme, psids=(PSID_CAM, PSID_DENM),
                                                  start_unix_s=NOW - 60))
    return out
