"""The exception tree shared by agent and server protocol code."""

from __future__ import annotations


class ClasscamError(Exception):
    """Root of every error classcam raises on purpose."""


class ProtocolError(ClasscamError):
    """A message that does not follow the v1 protocol (bad topic, bad JSON, bad fields)."""


class TopicError(ProtocolError):
    """A topic that is not a classcam v1 topic, or names an invalid id."""

    def __init__(self, topic: str, why: str) -> None:
        super().__init__(f"bad topic {topic!r}: {why}")
        self.topic = topic
        self.why = why


class SignatureInvalid(ClasscamError):
    """A manifest whose Ed25519 signature does not verify against the device's key."""
