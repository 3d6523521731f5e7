"""QRNG readers: the HTTPS endpoint (formats, mutual TLS, failures) and device paths."""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path

import pytest

from corridor.entropy.qrng import (
    DeviceQrngReader,
    HttpsQrngReader,
    QrngUnavailable,
    decode_body,
    open_reader,
    public_label,
)
from corridor.errors import ParameterError
from tests.entropy.conftest import ClientTls
from tests.entropy.qrng_server import QrngServer


def _reader(server: QrngServer, tls: ClientTls, path: str) -> HttpsQrngReader:
    return HttpsQrngReader(server.url(path), ca=tls.ca, cert=tls.cert, key=tls.key,
                           timeout_s=5)


@pytest.mark.parametrize("path", ["/raw", "/anu", "/anu-hex", "/qrypt"])
def test_each_format_gives_exactly_the_bytes_asked(qrng_server: QrngServer, tls: ClientTls,
                                                   path: str) -> None:
    reader = _reader(qrng_server, tls, path)
    try:
        first, second = reader.read(1500), reader.read(1500)
    finally:
        reader.close()
    assert len(first) == len(second) == 1500
    assert first != second


def test_length_placeholder_in_url(qrng_server: QrngServer, tls: ClientTls) -> None:
    url = qrng_server.url("/raw") + "?length={length}"
    reader = HttpsQrngReader(url, ca=tls.ca, cert=tls.cert, key=tls.key)
    assert len(reader.read(77)) == 77
    reader.close()


@pytest.mark.parametrize(("path", "reason", "detail"), [
    ("/unavailable", "http_status", "503"),
    ("/short", "short_read", "32 of 64 bytes"),
    ("/not-json", "bad_format", "body is not JSON"),
    ("/nowhere", "http_status", "404"),
])
def test_endpoint_failures_have_a_reason(qrng_server: QrngServer, tls: ClientTls, path: str,
                                         reason: str, detail: str) -> None:
    reader = _reader(qrng_server, tls, path)
    with pytest.raises(QrngUnavailable) as info:
        reader.read(64)
    reader.close()
    assert info.value.reason == reason and info.value.detail == detail


def test_connection_refused(refused_url: str, tls: ClientTls) -> None:
    reader = HttpsQrngReader(refused_url, ca=tls.ca, cert=tls.cert, key=tls.key, timeout_s=2)
    with pytest.raises(QrngUnavailable) as info:
        reader.read(64)
    assert info.value.reason == "connection_refused"


def test_client_without_certificate_is_refused_by_the_endpoint(qrng_server: QrngServer,
                                                               tls: ClientTls) -> None:
    reader = HttpsQrngReader(qrng_server.url("/raw"), ca=tls.ca, timeout_s=5)
    with pytest.raises(QrngUnavailable) as info:
        reader.read(64)
    assert info.value.reason in ("tls", "transport", "connection_refused")


def test_endpoint_not_signed_by_the_ca_is_refused(qrng_server: QrngServer, tls: ClientTls,
                                                  tmp_path: Path) -> None:
    from corridor.kms.pki import init_pki

    other = init_pki(tmp_path / "other", ["x"], [])
    reader = HttpsQrngReader(qrng_server.url("/raw"), ca=other.ca_cert, cert=tls.cert,
                             key=tls.key, timeout_s=5)
    with pytest.raises(QrngUnavailable) as info:
        reader.read(64)
    assert info.value.reason == "tls"


def test_plain_http_is_refused_unless_allowed() -> None:
    with pytest.raises(ParameterError, match="https://"):
        HttpsQrngReader("http://127.0.0.1:1/raw")
    with pytest.raises(ParameterError, match="both or neither"):
        HttpsQrngReader("https://127.0.0.1:1/raw", cert="c.pem")


def test_label_and_repr_hide_query_and_credentials() -> None:
    url = "https://user:secret@qrng.example:8443/api/v1/random?apikey=TOKEN&length=9"
    assert public_label(url) == "https://qrng.example:8443/api/v1/random"
    reader = HttpsQrngReader(url, headers={"Authorization": "Bearer TOKEN"})
    assert "TOKEN" not in repr(reader) and "secret" not in repr(reader)


@pytest.mark.parametrize(("body", "expected"), [
    ({"type": "uint8", "data": [0, 255, 16], "success": True}, b"\x00\xff\x10"),
    ({"type": "hex16", "data": ["00ff", "1020"], "success": True}, b"\x00\xff\x10\x20"),
    ({"type": "hex8", "data": ["ab", "cd"]}, b"\xab\xcd"),
    ({"random": [base64.b64encode(b"abc").decode(), base64.b64encode(b"d").decode()],
      "size": 2}, b"abcd"),
])
def test_json_shapes_decode(body: object, expected: bytes) -> None:
    assert decode_body("application/json; charset=utf-8", json.dumps(body).encode(),
                       "t") == expected


@pytest.mark.parametrize("body", [
    {"type": "uint8", "data": [256]},
    {"type": "uint8", "data": [True]},
    {"type": "uint16", "data": [1]},
    {"type": "uint8", "data": [1], "success": False},
    {"random": ["not base64!"]},
    {"random": "abc"},
    {"other": 1},
    [1, 2],
])
def test_malformed_json_is_refused(body: object) -> None:
    with pytest.raises(QrngUnavailable) as info:
        decode_body("application/json", json.dumps(body).encode(), "t")
    assert info.value.reason == "bad_format"


def test_unknown_content_type_is_refused() -> None:
    with pytest.raises(QrngUnavailable, match="text/html"):
        decode_body("text/html", b"x", "t")


def test_device_reader_reads_a_file_in_sequence_and_reports_end(tmp_path: Path) -> None:
    path = tmp_path / "qrandom0"
    content = os.urandom(3000)
    path.write_bytes(content)
    reader = open_reader(str(path))
    assert isinstance(reader, DeviceQrngReader)
    assert reader.read(1000) + reader.read(1000) == content[:2000]
    with pytest.raises(QrngUnavailable) as info:
        reader.read(2000)
    assert info.value.reason == "short_read" and info.value.detail == "1000 of 2000 bytes"
    reader.close()


def test_device_reader_reads_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "qrng.fifo"
    os.mkfifo(fifo)
    content = os.urandom(5000)

    def write() -> None:
        with open(fifo, "wb") as out:
            for i in range(0, len(content), 700):  # in pieces: reads must loop
                out.write(content[i:i + 700])
                out.flush()

    writer = threading.Thread(target=write)
    writer.start()
    reader = DeviceQrngReader(fifo)
    assert reader.read(5000) == content
    writer.join(5)
    reader.close()


def test_missing_path_and_tls_options_on_a_path_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="source"):
        open_reader(str(tmp_path / "absent"))
    with pytest.raises(ParameterError, match="only with an https"):
        open_reader(str(tmp_path), ca="ca.pem")
    with pytest.raises(ParameterError, match="not a directory"):
        open_reader(str(tmp_path))
