"""Faults to inject on the agent's side of the link, behind the real link's interface."""

from __future__ import annotations

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
