from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mobility.ota.harness import World, make_world, serving


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """Two vehicles, telematics v2 assigned to both and brakes v2 to v-001, served."""
    with serving(make_world(tmp_path)) as running:
        yield running
