"""MQTT transport of the fleet: topics, one client per party, handshakes over the broker.

This module owns how fleet messages travel. Every party (back end session, depot gateway,
vehicle) is one paho-mqtt client of the broker (Mosquitto); every publish is QoS 1 (at
least once: the guard's replay check makes a duplicate harmless, it is refused as
``replayed``). Topics, per depot and vehicle (IDs never contain ``/``, ``+`` or ``#``):

===============================================  ============================================
topic                                            carries
===============================================  ============================================
``corridor/fleet/<depot>/hs/<channel>/up``       hybrid handshake, back end -> depot
``corridor/fleet/<depot>/hs/<channel>/down``     hybrid handshake, depot -> back end
``corridor/fleet/<depot>/cmd/<channel>``         ``FB01`` commands, back end -> depot
``corridor/fleet/<depot>/ack/<channel>``         ``FB01`` acknowledgements, depot -> back end
``corridor/fleet/<depot>/vehicle/<id>/cmd``      ``FV01`` commands, depot -> vehicle
``corridor/fleet/<depot>/vehicle/<id>/ack``      ``FW01`` acknowledgements, vehicle -> depot
===============================================  ============================================

Vehicles and depots connect with a stable client ID and a persistent session (MQTT
``clean_session = false``): the broker queues their QoS 1 messages while they are away,
and the guard refuses whatever expired meanwhile. Back-end channels are transient.

A *channel* is one back-end session (random hex chosen by the back end), so several
back-end processes (``corridor fleet send``, ``corridor fleet watch``) talk to one depot
at once. The broker sees only handshake messages (public keys, KEM ciphertexts, the QKD
key_ID, MACs) and AES-GCM ciphertexts.

:class:`MqttLink` runs paho's network loop in its thread and hands each message to the
subscriber's handler in a separate dispatcher thread, so a handler may publish and wait
for the broker's PUBACK without blocking the network loop.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

from corridor.hybrid.errors import TransportError
from corridor.mobility.fleet.errors import FleetTransportError

_log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1883
QOS = 1
TOPIC_ROOT = "corridor/fleet"

Handler = Callable[[str, bytes], None]


def handshake_topics(depot_id: str, channel: str) -> tuple[str, str]:
    """``(up, down)`` handshake topics of one channel."""
    base = f"{TOPIC_ROOT}/{depot_id}/hs/{channel}"
    return f"{base}/up", f"{base}/down"


def command_topic(depot_id: str, channel: str) -> str:
    return f"{TOPIC_ROOT}/{depot_id}/cmd/{channel}"


def ack_topic(depot_id: str, channel: str) -> str:
    return f"{TOPIC_ROOT}/{depot_id}/ack/{channel}"


def vehicle_command_topic(depot_id: str, vehicle_id: str) -> str:
    return f"{TOPIC_ROOT}/{depot_id}/vehicle/{vehicle_id}/cmd"


def vehicle_ack_topic(depot_id: str, vehicle_id: str) -> str:
    return f"{TOPIC_ROOT}/{depot_id}/vehicle/{vehicle_id}/ack"


def vehicle_client_id(depot_id: str, vehicle_id: str) -> str:
    """The stable MQTT client ID of a vehicle (its persistent session)."""
    return f"corridor-vehicle-{depot_id}-{vehicle_id}"[:128]


def depot_client_id(depot_id: str) -> str:
    """The stable MQTT client ID of a depot gateway (its persistent session)."""
    return f"corridor-depot-{depot_id}"[:128]


def broker_reachable(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                     timeout_s: float = 1.0) -> bool:
    """Whether a TCP connection to the broker opens (tests skip when it does not)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


_STOP = object()


class MqttLink:
    """One party's MQTT client (module docstring).

    Args:
        client_id: the MQTT client ID (unique per broker).
        host, port: the broker.
        timeout_s: how long connect, subscribe and publish wait for the broker.
        persistent: keep the session at the broker while disconnected (MQTT
            ``clean_session = false``): QoS 1 messages for this client ID are queued and
            delivered when it reconnects (a vehicle that was asleep gets the commands that
            have not expired). Needs a stable ``client_id``.
    """

    def __init__(self, client_id: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 *, timeout_s: float = 10.0, persistent: bool = False) -> None:
        import paho.mqtt.client as mqtt

        self.client_id = client_id
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                   protocol=mqtt.MQTTv311, clean_session=not persistent)
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_socket_open = self._on_socket_open
        self._handlers: dict[str, Handler] = {}
        self._connected = threading.Event()
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._dispatcher: threading.Thread | None = None
        self._lock = threading.Lock()
        self.published = 0
        self.received = 0

    def __repr__(self) -> str:
        return f"MqttLink({self.client_id!r}, {self.host}:{self.port})"

    def start(self) -> MqttLink:
        """Connect and start the network loop; :class:`FleetTransportError` if the
        broker does not accept within ``timeout_s``."""
        self._dispatcher = threading.Thread(target=self._dispatch, daemon=True,
                                            name=f"mqtt-{self.client_id}")
        self._dispatcher.start()
        try:
            self._client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            self.close()
            raise FleetTransportError(f"cannot connect to the MQTT broker at {self.host}:"
                                      f"{self.port}: {exc.strerror or exc}") from None
        self._client.loop_start()
        if not self._connected.wait(self.timeout_s):
            self.close()
            raise FleetTransportError(f"the MQTT broker at {self.host}:{self.port} did not "
                                      f"accept the connection within {self.timeout_s:g} s")
        return self

    @staticmethod
    def _on_socket_open(client: Any, userdata: Any, sock: Any) -> None:
        # A publish is written in pieces; with Nagle's algorithm the last piece waits for
        # the broker's delayed ACK (~40 ms per hop on Linux). Commands are latency-bound.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            _log.warning("MQTT broker refused %s: %s", self.client_id, reason_code)
            return
        with self._lock:
            filters = list(self._handlers)
        for topic_filter in filters:  # a reconnect starts a clean session: subscribe again
            client.subscribe(topic_filter, qos=QOS)
        self._connected.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self._inbox.put((message.topic, bytes(message.payload)))

    def _dispatch(self) -> None:
        import paho.mqtt.client as mqtt

        while True:
            item = self._inbox.get()
            if item is _STOP:
                return
            topic, payload = item
            self.received += 1
            with self._lock:
                handlers = [h for f, h in self._handlers.items()
                            if mqtt.topic_matches_sub(f, topic)]
            for handler in handlers:
                try:
                    handler(topic, payload)
                except Exception:  # one bad message must not stop the party
                    _log.exception("fleet handler for %s failed", topic)

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Deliver every message on ``topic_filter`` to ``handler`` (QoS 1); returns once
        the broker acknowledged the subscription. Before :meth:`start` it only registers
        the handler (the connection subscribes): a persistent session's queued messages
        arrive right after connecting and must find their handler."""
        with self._lock:
            self._handlers[topic_filter] = handler
        if not self._connected.is_set():
            return
        done = threading.Event()
        previous = self._client.on_subscribe

        def on_subscribe(*args: Any) -> None:
            done.set()

        self._client.on_subscribe = on_subscribe
        try:
            result, _mid = self._client.subscribe(topic_filter, qos=QOS)
            if result != 0 or not done.wait(self.timeout_s):
                raise FleetTransportError(f"the MQTT broker did not acknowledge the "
                                          f"subscription to {topic_filter}")
        finally:
            self._client.on_subscribe = previous

    def publish(self, topic: str, payload: bytes, *, wait: bool = True) -> None:
        """Publish with QoS 1; with ``wait``, return once the broker sent its PUBACK."""
        info = self._client.publish(topic, payload, qos=QOS)
        if info.rc != 0:
            raise FleetTransportError(f"MQTT publish to {topic} failed (rc {info.rc})")
        self.published += 1
        if wait:
            try:
                info.wait_for_publish(self.timeout_s)
            except (RuntimeError, ValueError) as exc:
                raise FleetTransportError(f"MQTT publish to {topic}: {exc}") from None
            if not info.is_published():
                raise FleetTransportError(f"the MQTT broker did not acknowledge a publish to "
                                          f"{topic} within {self.timeout_s:g} s")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.disconnect()
        with contextlib.suppress(Exception):
            self._client.loop_stop()
        if self._dispatcher is not None:
            self._inbox.put(_STOP)
            if self._dispatcher is not threading.current_thread():
                self._dispatcher.join(timeout=5)
            self._dispatcher = None


class MqttByteTransport:
    """A hybrid-handshake :class:`~corridor.hybrid.transport.ByteTransport` over two MQTT
    topics: ``send`` publishes to ``out_topic``; ``recv`` returns what :meth:`deliver`
    (the subscription handler of ``in_topic``) queued."""

    def __init__(self, link: MqttLink, out_topic: str, timeout_s: float | None = 30.0) -> None:
        self.link = link
        self.out_topic = out_topic
        self.timeout_s = timeout_s
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._closed = False

    def deliver(self, topic: str, payload: bytes) -> None:
        self._inbox.put(payload)

    def send(self, message: bytes) -> None:
        if self._closed:
            raise TransportError("send on a closed transport", "transport_closed")
        try:
            self.link.publish(self.out_topic, message)
        except FleetTransportError as exc:
            raise TransportError(str(exc), "transport_closed") from None

    def recv(self) -> bytes:
        if self._closed:
            raise TransportError("receive on a closed transport", "transport_closed")
        try:
            item = self._inbox.get(timeout=self.timeout_s)
        except queue.Empty:
            raise TransportError(f"no handshake message within {self.timeout_s:g} s",
                                 "transport_timeout") from None
        if item is _STOP:
            self._closed = True
            raise TransportError("the transport was closed", "transport_closed")
        return bytes(item)

    def close(self) -> None:
        if not self._closed:
            self._inbox.put(_STOP)

    def __repr__(self) -> str:
        return f"MqttByteTransport(out={self.out_topic!r})"


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "QOS", "MqttByteTransport", "MqttLink",
           "ack_topic", "broker_reachable", "command_topic", "depot_client_id",
           "handshake_topics", "vehicle_ack_topic", "vehicle_client_id",
           "vehicle_command_topic"]
