"""Fixtures of the inventory tests: the generated corpus and the TLS servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from corridor.inventory.findings import ScanResult
from corridor.inventory.scan import ScanOptions, scan
from tests.inventory.corpus import Expected, build_corpus
from tests.inventory.tls_servers import Server, running_servers


@pytest.fixture(scope="module")
def tls_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """The hybrid and classic TLS servers, running for the module."""
    with running_servers(tmp_path_factory.mktemp("tls")) as servers:
        yield servers


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Expected]]:
    """The corpus directory and its expected findings (TLS endpoints not included)."""
    root = tmp_path_factory.mktemp("corpus")
    return root, build_corpus(root)


@pytest.fixture(scope="module")
def corpus_scan(corpus: tuple[Path, list[Expected]], tls_servers: list[Server]
                ) -> tuple[ScanResult, list[Expected]]:
    """One scan of the corpus and the TLS servers, with every expected finding."""
    root, expected = corpus
    targets = [str(root)] + [s.target for s in tls_servers]
    result = scan(targets, ScanOptions(timeout_s=3.0))
    return result, expected + [e for s in tls_servers for e in s.expected]
