"""Faults to inject on the agent's side of the link, behind the real link's interface."""

from __future__ import annotations

import random
import threading

import paho.mqtt.client as mqtt

from common import topics
from edge_agent.uplink import MqttLink


class CorruptingLink(MqttLink):
    """Flips one byte in the payload of chosen chunk offsets, the first time each is sent —
    what a bad radio, a bad SD card read or a meddling middlebox would do."""

    def __init__(self, *args: object, corrupt_offsets: set[int], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.corrupt_offsets = set(corrupt_offsets)
        self.corrupted: list[int] = []

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        parsed = topics.parse_up(topic) if topic.startswith(topics.UP) else None
        if parsed and parsed.offset is not None and parsed.offset in self.corrupt_offsets:
            self.corrupt_offsets.discard(parsed.offset)
            self.corrupted.append(parsed.offset)
            middle = len(payload) // 2
            payload = payload[:middle] + bytes([payload[middle] ^ 0xFF]) + payload[middle + 1 :]
        return super().publish(topic, payload, qos, retain)


class _HeldPublish:
    """Stands in for the ``MQTTMessageInfo`` of a message held back to be sent out of order:
    waiting on it sends it (if nothing sent it first), then waits for the broker's PUBACK."""

    rc = mqtt.MQTT_ERR_SUCCESS

    def __init__(self, link: MessageFaultLink) -> None:
        self.link = link
        self.real: mqtt.MQTTMessageInfo | None = None

    def wait_for_publish(self, timeout: float | None = None) -> None:
        if self.real is None:
            self.link.release_held()
        assert self.real is not None
        self.real.wait_for_publish(timeout)

    def is_published(self) -> bool:
        return self.real is not None and self.real.is_published()


class MessageFaultLink(MqttLink):
    """The device's link, with a meddling network in it: each chunk, init, fin and event may be
    sent twice (``duplicate``), held back and sent after the next one (``reorder``), and each
    chunk offset may arrive once with a byte flipped (``corrupt``); an event may be preceded by
    a torn copy, cut short mid-JSON. Probabilities per message, drawn from ``rng`` (seeded by
    the test); every fault applied is listed in ``injected`` as (kind, topic)."""

    def __init__(
        self,
        *args: object,
        rng: random.Random,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        corrupt: float = 0.0,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.rng = rng
        self.p_duplicate = duplicate
        self.p_reorder = reorder
        self.p_corrupt = corrupt
        self.injected: list[tuple[str, str]] = []
        self._held: tuple[str, bytes, int, _HeldPublish] | None = None
        self._corrupted: set[str] = set()
        self._lock = threading.RLock()

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        parsed = topics.parse_up(topic) if topic.startswith(topics.UP) else None
        kind = parsed.kind if parsed else None
        if kind not in _MEDDLED:
            return super().publish(topic, payload, qos, retain)
        assert kind is not None
        with self._lock:
            name = _NAMES[kind]
            corrupt = self.rng.random() < self.p_corrupt
            if kind is topics.UpKind.FILE_CHUNK and corrupt and topic not in self._corrupted:
                self._corrupted.add(topic)  # once per offset: the resend must get through
                self.injected.append((f"corrupt_{name}", topic))
                middle = len(payload) // 2
                flipped = bytes([payload[middle] ^ 0xFF])
                payload = payload[:middle] + flipped + payload[middle + 1 :]
            if kind is topics.UpKind.EVENT and corrupt:
                self.injected.append((f"corrupt_{name}", topic))
                super().publish(topic, payload[: len(payload) // 2], qos, retain)
            if (
                kind in (topics.UpKind.FILE_CHUNK, topics.UpKind.EVENT)
                and self._held is None
                and self.rng.random() < self.p_reorder
            ):
                self.injected.append((f"reorder_{name}", topic))
                held = _HeldPublish(self)
                self._held = (topic, payload, qos, held)
                return held  # type: ignore[return-value]
            info = super().publish(topic, payload, qos, retain)
            if self.rng.random() < self.p_duplicate:
                self.injected.append((f"duplicate_{name}", topic))
                super().publish(topic, payload, qos, retain)
            self.release_held()
            return info

    def release_held(self) -> None:
        """Send the message held back, now that one sent after it has gone first."""
        with self._lock:
            if self._held is None:
                return
            topic, payload, qos, held = self._held
            self._held = None
            held.real = super().publish(topic, payload, qos)


_MEDDLED = {
    topics.UpKind.FILE_CHUNK,
    topics.UpKind.FILE_INIT,
    topics.UpKind.FILE_FIN,
    topics.UpKind.EVENT,
}
_NAMES = {
    topics.UpKind.FILE_CHUNK: "chunk",
    topics.UpKind.FILE_INIT: "init",
    topics.UpKind.FILE_FIN: "fin",
    topics.UpKind.EVENT: "event",
}
