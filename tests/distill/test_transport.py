"""TCP transport on loopback: framing, errors, two OS processes, and a tampering relay."""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest

from corridor.distill.auth import AuthenticatedChannel, AuthenticationKeyPool
from corridor.distill.transport import (
    CONNECTION_LOSS_REASONS,
    PEER_ABORT_KIND,
    TcpEndpoint,
    TcpListener,
    connect,
    listen,
    parse_host_port,
    peer_abort_reason,
)
from corridor.errors import AuthenticationFailure, ParameterError, ProtocolAbort
from corridor.randomness import RandomSource

HOST = "127.0.0.1"
SECRET = RandomSource.seeded(2026).bytes(8192)


def _listen_in_thread(**kwargs: Any) -> tuple[Callable[[], TcpEndpoint], int]:
    """Start ``listen`` on a free port in a thread; return (wait for endpoint, port)."""
    port_box: queue.Queue[int] = queue.Queue()
    result: queue.Queue[TcpEndpoint | BaseException] = queue.Queue()

    def run() -> None:
        try:
            result.put(listen(HOST, 0, on_listening=port_box.put, **kwargs))
        except BaseException as exc:  # handed to the test thread
            result.put(exc)

    threading.Thread(target=run, daemon=True).start()
    port = port_box.get(timeout=10)

    def wait() -> TcpEndpoint:
        got = result.get(timeout=10)
        if isinstance(got, BaseException):
            raise got
        return got

    return wait, port


def _connected_pair(**kwargs: Any) -> tuple[TcpEndpoint, TcpEndpoint]:
    wait, port = _listen_in_thread(**kwargs)
    client = connect(HOST, port, timeout_s=5, **kwargs)
    return wait(), client


def test_frames_round_trip_and_are_counted() -> None:
    server, client = _connected_pair()
    with server, client:
        big = bytes(range(256)) * 4096  # 1 MiB
        client.send("sift", b"")
        client.send("cascade", big)
        assert server.recv("sift", 5) == b""
        assert server.recv("cascade", 5) == big
        server.send("ok", b"\x00\x01")
        assert client.recv("ok", 5) == b"\x00\x01"
        assert client.stats.messages_sent == 2
        assert client.stats.bytes_sent == (5 + 4) + (5 + 7 + len(big))
        assert server.stats.bytes_received == client.stats.bytes_sent
        assert client.stats.round_trips == 1


def _bob_process(port: int, results: Any) -> None:
    """Bob in a separate OS process: authenticated echo of reversed payloads."""
    try:
        raw = connect(HOST, port, timeout_s=10, retries=20)
        bob = AuthenticatedChannel(raw, AuthenticationKeyPool(SECRET), "bob")
        for _ in range(20):
            payload = bob.recv("data", 10)
            bob.send("echo", payload[::-1])
        results.put(("ok", bob.auth_bits_consumed, bob.stats.messages_received))
        bob.close()
    except BaseException as exc:
        results.put(("error", repr(exc), 0))


def test_authenticated_exchange_between_two_processes() -> None:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes: list[Any] = []

    def start_bob(port: int) -> None:
        process = context.Process(target=_bob_process, args=(port, results))
        process.start()
        processes.append(process)

    raw = listen(HOST, 0, timeout_s=60, on_listening=start_bob, name="alice")
    alice = AuthenticatedChannel(raw, AuthenticationKeyPool(SECRET), "alice")
    try:
        for i in range(20):
            payload = RandomSource.seeded(i).bytes(17 * i)
            alice.send("data", payload)
            assert alice.recv("echo", 30) == payload[::-1]
        status, bits, received = results.get(timeout=30)
        assert status == "ok", bits
        assert bits == alice.auth_bits_consumed == 8 * (16 + 20 * 32)
        assert received == 20
    finally:
        alice.close()
        for process in processes:
            process.join(timeout=30)
    assert processes[0].exitcode == 0


def _recv_exact(sock: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class FlippingRelay:
    """A man in the middle on loopback that flips one bit in the Nth client->server frame."""

    def __init__(self, target_port: int, flip_frame: int | None) -> None:
        self.target_port = target_port
        self.flip_frame = flip_frame
        self._server = socket.create_server((HOST, 0))
        self._server.settimeout(10)
        self.port = int(self._server.getsockname()[1])
        self._sockets: list[socket.socket] = []   # before the thread that appends to it
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        with self._server:
            client, _ = self._server.accept()
        upstream = socket.create_connection((HOST, self.target_port), timeout=10)
        self._sockets += [client, upstream]
        threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()
        self._pump(client, upstream, True)

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()

    def _pump(self, source: socket.socket, sink: socket.socket, tamper: bool) -> None:
        count = 0
        while True:
            try:
                header = _recv_exact(source, 4)
                if header is None:
                    break
                body = _recv_exact(source, struct.unpack(">I", header)[0])
            except OSError:  # closed by close() at the end of the test, mid-frame too
                break
            if body is None:
                break
            if tamper and count == self.flip_frame:
                altered = bytearray(body)
                altered[len(altered) // 2] ^= 0x04
                body = bytes(altered)
            try:
                sink.sendall(header + body)
            except OSError:
                break
            count += 1
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize("flip_frame", [None, 0, 2])
def test_tampering_relay_is_caught_by_authentication(flip_frame: int | None) -> None:
    wait, alice_port = _listen_in_thread()
    relay = FlippingRelay(alice_port, flip_frame)
    bob = AuthenticatedChannel(connect(HOST, relay.port, timeout_s=5),
                               AuthenticationKeyPool(SECRET), "bob")
    alice = AuthenticatedChannel(wait(), AuthenticationKeyPool(SECRET), "alice")
    try:
        for i in range(4):
            bob.send("parity", bytes([i]) * 40)
        for i in range(4):
            if i == flip_frame:
                with pytest.raises(AuthenticationFailure, match="tag mismatch"):
                    alice.recv("parity", 5)
                with pytest.raises(AuthenticationFailure):
                    alice.recv("parity", 5)
                break
            assert alice.recv("parity", 5) == bytes([i]) * 40
        else:
            assert flip_frame is None
    finally:
        alice.close()
        bob.close()
        relay.close()


def _free_port() -> int:
    with socket.create_server((HOST, 0)) as probe:
        return int(probe.getsockname()[1])


def test_refused_connection_is_reported() -> None:
    with pytest.raises(ProtocolAbort) as info:
        connect(HOST, _free_port(), timeout_s=1, retries=1, retry_interval_s=0.01)
    assert info.value.reason == "connection_refused"
    assert "2 attempt" in str(info.value)


def test_listen_without_peer_times_out() -> None:
    with pytest.raises(ProtocolAbort) as info:
        listen(HOST, 0, timeout_s=0.2)
    assert info.value.reason == "channel_timeout"


def test_listen_on_busy_port_is_reported() -> None:
    with socket.create_server((HOST, 0)) as busy:
        port = int(busy.getsockname()[1])
        with pytest.raises(ProtocolAbort) as info:
            listen(HOST, port, timeout_s=0.2)
    assert info.value.reason == "listen_failed"


def test_receive_timeout_between_frames_leaves_endpoint_usable() -> None:
    server, client = _connected_pair()
    with server, client:
        with pytest.raises(ProtocolAbort) as info:
            server.recv("m", 0.1)
        assert info.value.reason == "channel_timeout"
        client.send("m", b"late")
        assert server.recv("m", 5) == b"late"


def test_receive_timeout_inside_a_frame_breaks_the_endpoint() -> None:
    wait, port = _listen_in_thread()
    with socket.create_connection((HOST, port)) as raw, wait() as server:
        raw.sendall(struct.pack(">I", 100) + b"\x01m")  # promises 100 bytes, sends 2
        with pytest.raises(ProtocolAbort, match="channel_timeout"):
            server.recv("m", 0.2)
        with pytest.raises(ProtocolAbort) as info:
            server.recv("m", 0.2)
        assert info.value.reason == "channel_broken"


def test_peer_gone_is_reported() -> None:
    server, client = _connected_pair()
    client.close()
    with server:
        with pytest.raises(ProtocolAbort) as info:
            server.recv("m", 5)
        assert info.value.reason == "peer_closed"
        with pytest.raises(ProtocolAbort) as info:
            server.send("m", b"x")
        assert info.value.reason == "channel_broken"


def test_oversize_frames_are_refused_both_ways() -> None:
    server, client = _connected_pair(max_frame_bytes=1000)
    with server, client:
        with pytest.raises(ProtocolAbort) as info:
            client.send("m", bytes(999))
        assert info.value.reason == "frame_too_large"
    wait, port = _listen_in_thread(max_frame_bytes=1000)
    with socket.create_connection((HOST, port)) as raw, wait() as server:
        raw.sendall(struct.pack(">I", 10**9))
        with pytest.raises(ProtocolAbort) as info:
            server.recv("m", 5)
        assert info.value.reason == "frame_too_large"


@pytest.mark.parametrize("body", [b"\x09ab", b"\x00abc", b"\x01"])
def test_malformed_frames_are_refused(body: bytes) -> None:
    wait, port = _listen_in_thread()
    with socket.create_connection((HOST, port)) as raw, wait() as server:
        raw.sendall(struct.pack(">I", len(body)) + body)
        with pytest.raises(ProtocolAbort) as info:
            server.recv("m", 5)
        assert info.value.reason == "malformed_frame"


def test_unexpected_type_is_reported() -> None:
    server, client = _connected_pair()
    with server, client:
        client.send("estimate", b"")
        with pytest.raises(ProtocolAbort) as info:
            server.recv("sift", 5)
        assert info.value.reason == "unexpected_message"


def test_parse_host_port() -> None:
    assert parse_host_port("127.0.0.1:7700") == ("127.0.0.1", 7700)
    assert parse_host_port("[::1]:80") == ("::1", 80)
    assert parse_host_port("localhost:0", allow_zero=True) == ("localhost", 0)
    for bad in ("7700", "host:", ":80", "host:port", "host:70000", "host:0"):
        with pytest.raises(ParameterError):
            parse_host_port(bad, field="--peer")


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(ParameterError, match="port"):
        connect(HOST, 0)
    with pytest.raises(ParameterError, match="port"):
        listen(HOST, 70000)
    with pytest.raises(ParameterError, match="timeout_s"):
        connect(HOST, 80, timeout_s=-1)
    with pytest.raises(ParameterError, match="retries"):
        connect(HOST, 80, retries=-1)


def test_listener_accepts_one_peer_after_another_on_the_same_port() -> None:
    with TcpListener(HOST, 0, send_timeout_s=5) as listener:
        for i in range(3):
            client = connect(HOST, listener.port, timeout_s=5, retries=0)
            server = listener.accept(5)
            client.send("ping", bytes([i]))
            assert server.recv("ping", 5) == bytes([i])
            client.close()  # the peer goes away; the port stays bound
            with pytest.raises(ProtocolAbort) as info:
                server.recv("ping", 5)
            assert info.value.reason == "peer_closed"
            server.close()
        with pytest.raises(ProtocolAbort) as info:
            listener.accept(0.05)
        assert info.value.reason == "channel_timeout"
    with pytest.raises(ProtocolAbort) as info:
        listener.accept(1)
    assert info.value.reason == "channel_closed"


def test_listener_on_busy_port_is_reported() -> None:
    with TcpListener(HOST, 0) as first, pytest.raises(ProtocolAbort) as info:
        TcpListener(HOST, first.port)
    assert info.value.reason == "listen_failed"


@pytest.mark.parametrize("stated", ["source_closed", "authentication_failed"])
def test_a_peer_abort_notice_ends_the_wait_and_carries_its_reason(stated: str) -> None:
    server, client = _connected_pair()
    with server, client:
        client.send(PEER_ABORT_KIND, stated.encode())
        with pytest.raises(ProtocolAbort) as info:
            server.recv("auth", 5)
        assert info.value.reason == "peer_aborted"
        assert peer_abort_reason(info.value) == stated
        with pytest.raises(ProtocolAbort) as again:
            server.recv("auth", 5)
        assert again.value.reason == "channel_broken"


def test_connection_loss_reasons_never_cover_tampering_or_bad_frames() -> None:
    assert {"peer_closed", "connection_refused", "channel_timeout"} <= CONNECTION_LOSS_REASONS
    assert not {"authentication_failed", "malformed_frame", "frame_too_large",
                "unexpected_message", "peer_aborted"} & CONNECTION_LOSS_REASONS
    assert peer_abort_reason(ProtocolAbort("peer_closed", "gone")) is None
