"""``open_decision_audit``: the --audit-log/--audit-key-file pair that hybrid and tunnel
commands share; a bad key file is named, and a good one gives a log that verifies."""

from __future__ import annotations

from pathlib import Path

import pytest

from corridor.cli.common import open_decision_audit
from corridor.errors import ParameterError
from corridor.hybrid.policy import DecisionRecorder, decide
from corridor.kms.audit import verify_audit_log


def test_no_audit_log_means_none(tmp_path: Path) -> None:
    assert open_decision_audit(None, None) is None


@pytest.mark.parametrize(("content", "given"), [
    (None, False), ("zz" * 32, True), ("ab" * 16, True)])
def test_a_bad_key_file_is_named(tmp_path: Path, content: str | None, given: bool) -> None:
    key_file = tmp_path / "audit.key"
    if content is not None:
        key_file.write_text(content)
    with pytest.raises(ParameterError) as info:
        open_decision_audit(tmp_path / "audit.jsonl", key_file if given else None)
    assert info.value.field == "--audit-key-file"
    assert not (tmp_path / "audit.jsonl").exists()


def test_decisions_land_in_a_log_that_verifies(tmp_path: Path) -> None:
    key = bytes(range(32))
    (tmp_path / "audit.key").write_text(key.hex())
    log = open_decision_audit(tmp_path / "audit.jsonl", tmp_path / "audit.key")
    DecisionRecorder(log).record(decide("pqc-required", qkd_missing="pool_empty"))
    log.close()
    result = verify_audit_log(tmp_path / "audit.jsonl", key)
    assert result.ok and result.entries == 1
