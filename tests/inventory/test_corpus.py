"""The scanner against the ground-truth corpus: every listed finding, with its key
size, at its place; nothing reported that is not listed; no finding without a location."""

from __future__ import annotations

import pytest

from corridor.inventory.findings import CATEGORIES, ScanResult
from tests.inventory.corpus import Expected, score


def test_every_expected_finding_is_reported_with_its_key_size(
        corpus_scan: tuple[ScanResult, list[Expected]]) -> None:
    result, expected = corpus_scan
    missing = [e for e in expected if not any(e.matches(f) for f in result.findings)]
    assert missing == []
    assert result.skipped == []


@pytest.mark.parametrize("category", CATEGORIES)
def test_recall_and_precision_per_category(
        corpus_scan: tuple[ScanResult, list[Expected]], category: str) -> None:
    result, expected = corpus_scan
    row = score(expected, result.findings)[category]
    assert row["expected"] > 0, f"the corpus lists no {category} finding"
    assert row["recall"] == 1.0
    assert row["precision"] == 1.0


def test_every_finding_has_a_location_and_a_line_or_field(
        corpus_scan: tuple[ScanResult, list[Expected]]) -> None:
    result, _ = corpus_scan
    assert result.findings
    for finding in result.findings:
        assert finding.location and (finding.line is not None or finding.field is not None)
        assert finding.method


def test_the_hybrid_group_is_seen_only_where_it_is_accepted(
        corpus_scan: tuple[ScanResult, list[Expected]], tls_servers: list) -> None:
    result, _ = corpus_scan
    hybrid, classic = tls_servers
    groups = {s.name: {f.algorithm for f in result.findings
                       if f.location == s.target and f.field == "groups"}
              for s in (hybrid, classic)}
    assert groups == {"hybrid": {"X25519MLKEM768", "X25519"}, "classic": {"ECDH"}}
    default = [f for f in result.findings if f.location == hybrid.target
               and "negotiated by default" in f.detail]
    assert [f.algorithm for f in default] == ["X25519MLKEM768"]


def test_private_keys_are_described_never_copied(
        corpus_scan: tuple[ScanResult, list[Expected]], corpus: tuple) -> None:
    result, _ = corpus_scan
    root, _ = corpus
    key_text = (root / "keys" / "rsa3072.key").read_text()
    body = "".join(key_text.splitlines()[1:-1])
    for finding in result.findings:
        for value in finding.to_dict().values():
            assert body[:40] not in str(value)
            assert "PRIVATE KEY-----" not in str(value)
