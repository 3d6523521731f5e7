"""Tests of corridor.kms.audit: the chain catches every edit; key material is refused."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.errors import ParameterError
from corridor.kms.audit import (
    AuditLog,
    AuditLogError,
    _dump_fields,
    _serialize,
    derive_audit_key,
    export,
    head_path,
    syslog_param_name,
    verify_audit_log,
)
from corridor.logs import KeyMaterialRefused

KEK = bytes(range(32))
OTHER_KEK = bytes(range(1, 33))
SECRET = bytes(range(100, 132))  # stands in for a delivered key


def _fill(path: Path, entries: int = 6) -> None:
    with AuditLog(path, KEK) as log:
        for i in range(entries):
            log.emit("keys_delivered", kme_id="kme-a", link_id="ab", direction="a_to_b",
                     count=1, size_bits=256, key_ids=[f"id-{i}"], qber=0.0125 * i)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    _fill(path)
    return path


def test_intact_log_verifies(log_path: Path) -> None:
    result = verify_audit_log(log_path, KEK)
    assert result.ok and result.entries == 6 and result.head_seq == 6
    assert result.first_bad_seq is None and result.warnings == ()
    entries = [json.loads(line) for line in _lines(log_path)]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5, 6]
    assert entries[0]["prev"] == "0" * 64
    assert all(b["prev"] == a["mac"] for a, b in itertools.pairwise(entries))
    assert entries[0]["time"].endswith("Z") and entries[0]["event"] == "keys_delivered"
    assert (log_path.stat().st_mode & 0o777) == 0o600


def test_reopen_continues_the_chain(log_path: Path) -> None:
    with AuditLog(log_path, KEK) as log:
        assert log.seq == 6
        log.emit("link_cleared", link_id="ab", operator="alice")
    assert verify_audit_log(log_path, KEK).entries == 7


def test_edit_is_detected(log_path: Path) -> None:
    lines = _lines(log_path)
    lines[2] = lines[2].replace(b'"count":1', b'"count":9')
    _write(log_path, lines)
    result = verify_audit_log(log_path, KEK)
    assert not result.ok and result.first_bad_seq == 3 and result.line == 3
    assert "MAC" in str(result.reason) and result.entries == 2


def test_edit_with_recomputed_mac_under_another_key_is_detected(log_path: Path) -> None:
    # An attacker without the KEK can only MAC under a key of their own.
    lines = _lines(log_path)
    from corridor.kms import audit

    entry = json.loads(lines[3])
    entry["fields"]["count"] = 50
    entry["mac"] = audit._entry_mac(derive_audit_key(OTHER_KEK), entry)
    lines[3] = audit._serialize(entry)
    _write(log_path, lines)
    result = verify_audit_log(log_path, KEK)
    assert not result.ok and result.first_bad_seq == 4


def test_deletion_is_detected(log_path: Path) -> None:
    lines = _lines(log_path)
    del lines[1]
    _write(log_path, lines)
    result = verify_audit_log(log_path, KEK)
    assert not result.ok and result.first_bad_seq == 2
    assert "found seq 3 where 2 was expected" in str(result.reason)


def test_insertion_is_detected(log_path: Path) -> None:
    lines = _lines(log_path)
    lines.insert(3, lines[2])  # replay an authentic entry
    _write(log_path, lines)
    result = verify_audit_log(log_path, KEK)
    assert not result.ok and result.first_bad_seq == 4 and "inserted" in str(result.reason)


def test_reordering_is_detected(log_path: Path) -> None:
    lines = _lines(log_path)
    lines[1], lines[2] = lines[2], lines[1]
    _write(log_path, lines)
    result = verify_audit_log(log_path, KEK)
    assert not result.ok and result.first_bad_seq == 2


def test_tail_truncation_is_detected(log_path: Path) -> None:
    _write(log_path, _lines(log_path)[:4])
    result = verify_audit_log(log_path, KEK)
    assert not result.ok and result.first_bad_seq == 5 and result.entries == 4
    assert "head says 6" in str(result.reason)
    with pytest.raises(AuditLogError, match="removed"):
        AuditLog(log_path, KEK)


def test_truncation_with_head_deleted_is_detected(log_path: Path) -> None:
    _write(log_path, _lines(log_path)[:4])
    head_path(log_path).unlink()
    result = verify_audit_log(log_path, KEK)
    assert not result.ok and "head file" in str(result.reason)
    with pytest.raises(AuditLogError, match="missing"):
        AuditLog(log_path, KEK)


def test_edited_head_is_detected(log_path: Path) -> None:
    head = json.loads(head_path(log_path).read_bytes())
    head["seq"] = 4
    head_path(log_path).write_text(json.dumps(head))
    result = verify_audit_log(log_path, KEK)
    assert not result.ok and "head" in str(result.reason)


def test_wrong_key_is_detected(log_path: Path) -> None:
    result = verify_audit_log(log_path, OTHER_KEK)
    assert not result.ok and result.first_bad_seq == 1 and "wrong key" in str(result.reason)
    with pytest.raises(AuditLogError, match="wrong key"):
        AuditLog(log_path, OTHER_KEK)


def test_crash_between_append_and_head_is_a_warning(log_path: Path, tmp_path: Path) -> None:
    saved = tmp_path / "head.saved"
    shutil.copy(head_path(log_path), saved)
    with AuditLog(log_path, KEK) as log:
        log.emit("pool_full", kme_id="kme-a", link_id="ab")
    shutil.copy(saved, head_path(log_path))  # the head write never happened
    result = verify_audit_log(log_path, KEK)
    assert result.ok and result.entries == 7 and result.head_seq == 6
    assert any("behind" in w for w in result.warnings)
    with AuditLog(log_path, KEK):  # reopening brings the head up to date
        pass
    assert verify_audit_log(log_path, KEK).warnings == ()


def test_torn_last_line_is_repaired_and_recorded(log_path: Path) -> None:
    with log_path.open("ab") as handle:
        handle.write(b'{"seq":7,"time":"2026-')
    result = verify_audit_log(log_path, KEK)
    assert result.ok and any("incomplete" in w for w in result.warnings)
    with AuditLog(log_path, KEK) as log:
        log.emit("link_cleared", link_id="ab", operator="bob")
    result = verify_audit_log(log_path, KEK)
    assert result.ok and result.entries == 8 and result.warnings == ()
    events = [json.loads(line)["event"] for line in _lines(log_path)]
    assert events[6:] == ["audit_tail_repaired", "link_cleared"]
    assert json.loads(_lines(log_path)[6])["fields"] == {"dropped_bytes": 22}


def test_empty_log_verifies(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    AuditLog(path, KEK).close()
    result = verify_audit_log(path, KEK)
    assert result.ok and result.entries == 0 and result.head_seq == 0


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_single_byte_change_is_detected(data: st.DataObject) -> None:
    original = _ORIGINAL_LOG
    position = data.draw(st.integers(0, len(original) - 1))
    replacement = data.draw(st.integers(0, 255).filter(lambda b: b != original[position]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        path.write_bytes(original[:position] + bytes([replacement]) + original[position + 1:])
        shutil.copy(_ORIGINAL_DIR / "audit.jsonl.head", head_path(path))
        assert not verify_audit_log(path, KEK).ok


_ORIGINAL_DIR = Path(tempfile.mkdtemp(prefix="corridor-audit-"))
_fill(_ORIGINAL_DIR / "audit.jsonl", entries=4)
with AuditLog(_ORIGINAL_DIR / "audit.jsonl", KEK) as _log:
    _log.emit("link_alarm_raised", link_id="é/ü", kind="qber_trend", qber_mean=0.0912,
              latched=False, note='quote " backslash \\ ]')
_ORIGINAL_LOG = (_ORIGINAL_DIR / "audit.jsonl").read_bytes()


# --- key material ------------------------------------------------------------------

@pytest.mark.parametrize("fields", [
    {"key": SECRET}, {"key": SECRET.hex()}, {"key_material": "AAEC"}, {"secret": "x"},
    {"keys": [SECRET.hex()]}, {"note": SECRET}, {"kek": "x"}, {"key_ids": [SECRET]},
    {"nested": {"private_key": "x"}},
])
def test_key_material_is_refused_and_nothing_written(log_path: Path,
                                                     fields: dict[str, object]) -> None:
    before = log_path.read_bytes()
    with AuditLog(log_path, KEK) as log, pytest.raises(KeyMaterialRefused) as info:
        log.emit("keys_delivered", kme_id="kme-a", **fields)
    assert SECRET.hex() not in str(info.value) and log_path.read_bytes() == before
    assert verify_audit_log(log_path, KEK).ok


def test_key_never_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, KEK) as log:
        log.emit("keys_delivered", key_ids=["id-1"], size_bits=256, count=1)
        with pytest.raises(KeyMaterialRefused):
            log.emit("keys_delivered", key_ids=["id-2"], key=SECRET)
    data = path.read_bytes() + head_path(path).read_bytes()
    assert SECRET not in data and SECRET.hex().encode() not in data
    assert KEK not in data and KEK.hex().encode() not in data


@pytest.mark.parametrize(("event", "fields"), [
    ("Keys Delivered", {}), ("", {}), ("x" * 33, {}), ("ok", {"bad name": 1}),
    ("ok", {"_private": 1}), ("ok", {"n" * 65: 1}),
])
def test_malformed_names_are_refused(tmp_path: Path, event: str,
                                     fields: dict[str, object]) -> None:
    with AuditLog(tmp_path / "a.jsonl", KEK) as log, pytest.raises(ParameterError):
        log.emit(event, **fields)


@pytest.mark.parametrize("kek", [b"short", "a" * 32, bytes(33)])
def test_bad_kek_is_refused_without_showing_it(tmp_path: Path, kek: object) -> None:
    with pytest.raises(ParameterError) as info:
        AuditLog(tmp_path / "a.jsonl", kek)  # type: ignore[arg-type]
    assert "a" * 32 not in str(info.value) and "short" not in str(info.value)


def test_missing_file_is_a_parameter_error(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="FILE"):
        verify_audit_log(tmp_path / "none.jsonl", KEK)
    with pytest.raises(ParameterError, match="FILE"):
        list(export(tmp_path / "none.jsonl", "cef"))


# --- concurrency -------------------------------------------------------------------

def test_concurrent_threads_keep_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, KEK, fsync_interval_s=1.0)

    def worker(n: int) -> None:
        for i in range(40):
            log.emit("keys_reserved", kme_id="kme-a", worker=n, i=i)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    result = verify_audit_log(path, KEK)
    assert result.ok and result.entries == 320
    seen = {(e["fields"]["worker"], e["fields"]["i"])
            for e in map(json.loads, _lines(path))}
    assert len(seen) == 320


def _append_from_process(path: str, worker: int, count: int, start: object = None) -> None:
    log = AuditLog(path, KEK)
    if start is not None:
        start.wait(60)  # type: ignore[attr-defined]
    for i in range(count):
        log.emit("keys_delivered", kme_id="kme-a", worker=worker, i=i)
    log.close()


def test_two_processes_keep_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    AuditLog(path, KEK).close()
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(3)  # start appending together so the writers interleave
    procs = [context.Process(target=_append_from_process, args=(str(path), n, 150, ready))
             for n in range(2)]
    for proc in procs:
        proc.start()
    _append_from_process(str(path), 2, 150, ready)  # and this process at the same time
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    result = verify_audit_log(path, KEK)
    assert result.ok and result.entries == 450 and result.head_seq == 450
    workers = [e["fields"]["worker"] for e in map(json.loads, _lines(path))]
    assert sorted(workers) == [0] * 150 + [1] * 150 + [2] * 150


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_reopens_and_keeps_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, KEK)
    log.emit("keys_delivered", worker=0, i=0)
    context = multiprocessing.get_context("fork")
    child = context.Process(target=lambda: [log.emit("keys_delivered", worker=1, i=i)
                                            for i in range(50)])
    child.start()
    for i in range(1, 51):
        log.emit("keys_delivered", worker=0, i=i)
    child.join(60)
    assert child.exitcode == 0
    log.emit("keys_delivered", worker=0, i=51)
    log.close()
    result = verify_audit_log(path, KEK)
    assert result.ok and result.entries == 102  # 52 from the parent, 50 from the child


# --- export --------------------------------------------------------------------------

TRICKY = 'a=b \\c |d ]e "f'


@pytest.fixture
def export_log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, KEK) as log:
        log.emit("keys_delivered", kme_id="kme-a", count=2, key_ids=["id-1", "id-2"],
                 size_bits=256)
        log.emit("link_alarm_raised", link_id="ab", kind="qber_trend", note=TRICKY,
                 multiline="one\ntwo", latched=True, reason=None,
                 single_photon_phase_error_upper_bound_value=0.25)
    return path


def test_export_jsonl_is_the_file(export_log: Path) -> None:
    assert list(export(export_log, "jsonl")) == export_log.read_text().splitlines()


def _cef_split_header(line: str) -> list[str]:
    parts, current, index = [], "", 0
    while len(parts) < 7:
        char = line[index]
        if char == "\\":
            current += line[index + 1]
            index += 2
            continue
        if char == "|":
            parts.append(current)
            current = ""
        else:
            current += char
        index += 1
    parts.append(line[index:])
    return parts


def _cef_extension(text: str) -> dict[str, str]:
    # A key starts where an unescaped space is followed by word characters and '='.
    pairs: dict[str, str] = {}
    tokens = re.split(r"(?<!\\) (?=\w+=)", text)
    for token in tokens:
        key, _, raw = token.partition("=")
        assert re.fullmatch(r"[A-Za-z0-9]+", key), key
        assert re.search(r"(?<!\\)=", raw) is None, raw  # every '=' in a value is escaped
        value, i = "", 0
        while i < len(raw):
            if raw[i] == "\\":
                value += {"n": "\n", "r": "\r"}.get(raw[i + 1], raw[i + 1])
                i += 2
            else:
                value += raw[i]
                i += 1
        pairs[key] = value
    return pairs


def test_export_cef_parses(export_log: Path) -> None:
    lines = list(export(export_log, "cef"))
    entries = [json.loads(line) for line in export_log.read_text().splitlines()]
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    header = _cef_split_header(lines[1])
    assert header[:7] == ["CEF:0", "Corridor", "corridor-kms", header[3], "link_alarm_raised",
                          "link alarm raised", "8"]
    ext = _cef_extension(header[7])
    assert ext["corridorNote"] == TRICKY and ext["corridorMultiline"] == "one\ntwo"
    assert ext["externalId"] == "2" and ext["corridorMac"] == entries[1]["mac"]
    assert ext["corridorLatched"] == "true" and "corridorReason" not in ext
    assert int(ext["rt"]) > 1_600_000_000_000
    first = _cef_extension(_cef_split_header(lines[0])[7])
    assert first["corridorKeyIds"] == "id-1,id-2" and first["corridorSizeBits"] == "256"


_SYSLOG = re.compile(
    r"<(?P<pri>\d{1,3})>1 (?P<time>\S+) (?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) "
    r"(?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) (?P<sd>(?:\[(?:[^\]\\]|\\.)*\])+) "
    r"(?P<msg>.*)")
_SD_ELEMENT = re.compile(r"\[([!-~]+?)((?: [^= \]\"]{1,32}=\"(?:[^\"\\\]]|\\.)*\")*)\]")
_SD_PARAM = re.compile(r" ([^= \]\"]{1,32})=\"((?:[^\"\\\]]|\\.)*)\"")


def _sd_unescape(value: str) -> str:
    """RFC 5424 6.3.3: only \\", \\\\ and \\] are escapes; any other backslash is literal."""
    return re.sub(r'\\(["\\\]])', r"\1", value)


def test_export_syslog_parses_as_rfc5424(export_log: Path) -> None:
    lines = list(export(export_log, "syslog", hostname="kme-a.example"))
    entries = [json.loads(line) for line in export_log.read_text().splitlines()]
    assert len(lines) == 2
    for line, entry in zip(lines, entries, strict=True):
        match = _SYSLOG.fullmatch(line)
        assert match, line
        assert match["host"] == "kme-a.example" and match["app"] == "corridor"
        assert match["msgid"] == entry["event"] and match["time"] == entry["time"]
        elements = {sd_id: {k: _sd_unescape(v) for k, v in _SD_PARAM.findall(params)}
                    for sd_id, params in _SD_ELEMENT.findall(match["sd"])}
        assert elements["corridorAudit@32473"] == {"seq": str(entry["seq"]),
                                                   "prev": entry["prev"], "mac": entry["mac"]}
        assert set(elements["corridorEvent@32473"]) == {
            syslog_param_name(k) for k, v in entry["fields"].items() if v is not None}
    pri = int(_SYSLOG.fullmatch(lines[1])["pri"])  # type: ignore[index]
    assert divmod(pri, 8) == (13, 4)  # log audit, warning
    alarm = {k: _sd_unescape(v) for k, v in _SD_PARAM.findall(
        _SD_ELEMENT.findall(_SYSLOG.fullmatch(lines[1])["sd"])[1][1])}  # type: ignore[index]
    assert alarm["note"] == TRICKY
    assert alarm["multiline"] == "one\\ntwo"  # RFC 5424: backslash-n is two characters
    long_name = syslog_param_name("single_photon_phase_error_upper_bound_value")
    assert len(long_name) == 32 and alarm[long_name] == "0.25"


def test_export_rejects_unknown_format(export_log: Path) -> None:
    with pytest.raises(ParameterError, match="format"):
        list(export(export_log, "xml"))


def test_concurrent_appends_share_fsyncs_and_each_returns_durable(tmp_path, monkeypatch):
    """Group commit: 8 threads x 25 appends with a slow disk (5 ms per fsync) need far
    fewer fsyncs than appends, every append returns only after an fsync that covered it
    (log first, then the head for it), and the chain verifies."""
    import threading
    import time as time_module

    import corridor.kms.audit as audit_module

    real_fsync = os.fsync
    calls: list[int] = []

    def slow_fsync(fd: int) -> None:
        calls.append(fd)
        time_module.sleep(0.005)
        real_fsync(fd)

    monkeypatch.setattr(audit_module.os, "fsync", slow_fsync)
    key = os.urandom(32)
    log = AuditLog(tmp_path / "audit.jsonl", key)
    late: list[tuple[int, int]] = []

    def writer(n: int) -> None:
        for i in range(25):
            seq = log.append("keys_delivered", {"count": 1, "writer": n, "i": i})
            durable = log._synced_seq  # what the group commit had made durable on return
            if durable < seq:
                late.append((seq, durable))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    assert late == []
    assert len(calls) < 200  # 200 appends, each fsync pair (log + head) shared
    result = verify_audit_log(tmp_path / "audit.jsonl", key)
    assert result.ok and result.entries == 200 and result.head_seq == 200


# -- the entry texts: one encoding of the fields, the same bytes as json.dumps --------

_JSON_SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
                 | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
_JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12)
# Lists of strings, the fast path: plain IDs, and strings that need escapes (quote,
# backslash, control characters, DEL, non-ASCII), which must leave it.
_STRING_LISTS = st.lists(st.sampled_from(["", "a", "sae-b", "0f1e2d3c-aaaa-8bbb-9ccc-000000000001",
                                          'q"uote', "back\\slash", "tab\t", "del\x7f",
                                          "\u00e9t\u00e9", "\U0001f511", "/slash"])
                         | st.text(max_size=8), max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), _JSON_VALUES | _STRING_LISTS,
                       max_size=5))
def test_fields_are_encoded_as_json_dumps_encodes_them(fields: dict[str, object]) -> None:
    for sort_keys in (True, False):
        assert _dump_fields(fields, sort_keys) == json.dumps(
            fields, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=True,
            allow_nan=False)


def test_an_entry_is_written_with_its_fields_sorted_and_verifies(tmp_path: Path) -> None:
    # The writer encodes the fields once, sorted; the line must still be what
    # _serialize makes of the parsed line, and the MAC what _canonical gives.
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, KEK) as log:
        log.emit("keys_reserved", slave_sae_ids=["sae-b"], key_ids=["k-2", "k-1"],
                 byte_offsets=[64, 32], count=2, kme_id="kme-a", note={"z": 1, "a": [2]})
    line = path.read_bytes()
    entry = json.loads(line)
    assert list(entry["fields"]) == sorted(entry["fields"])
    assert entry["fields"]["key_ids"] == ["k-2", "k-1"]     # lists keep their order
    assert _serialize(entry) == line
    assert verify_audit_log(path, KEK).ok
