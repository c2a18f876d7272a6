"""Helpers for agent service tests: an operator console that sends commands and timetables
the way the server does and watches what devices say; provisioned, registered field devices."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from common.clock import utc_now
from edge_agent.config import AgentConfig, load_config
from simulators.broker import MosquittoBroker
from simulators.harness import Device, ServerProcess, provision_device
from simulators.operator import Operator  # noqa: F401  (re-exported for the tests)

FAST_RECORDING = {"segment_seconds": 1.0, "keyframe_interval_s": 1.0, "bitrate": 300_000}
SMALL_CAMERA = {"width": 320, "height": 240, "fps": 10.0}


def field_device(
    tmp_path: Path,
    broker: MosquittoBroker,
    server: ServerProcess,
    name: str,
    settings: dict[str, dict[str, object]] | None = None,
    port: int | None = None,
    register: bool = True,
) -> tuple[Device, AgentConfig]:
    """A provisioned device with a small fast camera, registered with the server unless
    ``register`` is false (installed before anyone registered it); ``port`` reroutes its
    broker connection (through a shaped link, say)."""
    merged: dict[str, dict[str, object]] = {
        "camera": dict(SMALL_CAMERA),
        "recording": dict(FAST_RECORDING),
        "heartbeat": {"interval_s": 30.0},
    }
    for section, values in (settings or {}).items():
        merged.setdefault(section, {}).update(values)
    device = provision_device(tmp_path / "devices", name, broker, settings=merged)
    if register:
        server.register_device(device.device_id, device.public_key)
    if port is not None:
        text = device.config_path.read_text().replace(f"port = {broker.port}", f"port = {port}")
        device.config_path.write_text(text)
    return device, load_config(device.config_path)


def later(seconds: float) -> datetime:
    return utc_now() + timedelta(seconds=seconds)
