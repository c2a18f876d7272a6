"""The systemd unit verifies, and the agent speaks systemd's notify protocol."""

from __future__ import annotations

import socket
import subprocess
import sys
from configparser import ConfigParser
from pathlib import Path

import pytest

from edge_agent.notify import SystemdNotifier

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "classcam-agent.service"


def _unit() -> ConfigParser:
    parser = ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_has_what_a_field_device_needs():
    unit = _unit()
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "always"
    assert int(service["WatchdogSec"]) > 0
    assert unit["Unit"]["StartLimitIntervalSec"] == "0"
    assert service["StateDirectory"] == "classcam"
    assert service["ProtectSystem"] == "strict"
    assert "LoadCredential" in service


def test_systemd_analyze_verify_passes(tmp_path: Path):
    agent = Path(sys.executable).parent / "classcam-agent"
    assert agent.exists(), "the venv has the classcam-agent console script"
    rendered = tmp_path / "classcam-agent.service"
    rendered.write_text(
        UNIT.read_text().replace("/opt/classcam/.venv/bin/classcam-agent", str(agent))
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(rendered)], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    # Unknown keys are only warnings: treat any complaint about our unit as a failure.
    complaints = [line for line in result.stderr.splitlines() if rendered.name in line]
    assert complaints == []


def test_install_script_is_valid_shell():
    result = subprocess.run(
        ["sh", "-n", str(ROOT / "firmware_config" / "install-pi.sh")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_notifier_sends_ready_watchdog_status(tmp_path: Path):
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        server.settimeout(2)
        notifier = SystemdNotifier(address)
        assert notifier.ready("recording")
        assert notifier.watchdog()
        assert notifier.status("uploading 3 clips")
        got = [server.recv(4096).decode() for _ in range(3)]
    assert got == ["READY=1\nSTATUS=recording", "WATCHDOG=1", "STATUS=uploading 3 clips"]


def test_notifier_is_silent_outside_systemd(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier()
    assert not notifier.enabled
    assert notifier.ready() is False


def test_watchdog_interval_is_half_of_watchdog_sec(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WATCHDOG_USEC", "90000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert SystemdNotifier.watchdog_interval_s() == 45.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert SystemdNotifier.watchdog_interval_s() is None
