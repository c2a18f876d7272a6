"""The systemd units verify (the agent's, the server's, the ingest worker template), and the
agent speaks systemd's notify protocol."""

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
SERVER_UNIT = ROOT / "systemd" / "classcam-server.service"
INGEST_UNIT = ROOT / "systemd" / "classcam-ingest@.service"
VENV_BIN = "/opt/classcam/.venv/bin/"


def _unit(path: Path = UNIT) -> ConfigParser:
    parser = ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


def _values(path: Path, section: str, key: str) -> list[str]:
    """Every value of a key that may repeat (ConfigParser keeps only the last)."""
    values, current = [], None
    for line in path.read_text().splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line.startswith(f"{key}="):
            values.append(line.split("=", 1)[1])
    return values


def _verify(units: list[Path], name: str, tmp_path: Path) -> None:
    """``systemd-analyze verify`` ``name`` with ``units`` rendered into ``tmp_path``, their
    executables pointed at this venv's; any complaint naming one of them fails."""
    for unit in units:
        (tmp_path / unit.name).write_text(
            unit.read_text().replace(VENV_BIN, str(Path(sys.executable).parent) + "/")
        )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / name)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    # Unknown keys are only warnings: treat any complaint about our units as a failure.
    stems = [unit.name.split("@")[0].removesuffix(".service") for unit in units]
    complaints = [line for line in result.stderr.splitlines() if any(s in line for s in stems)]
    assert complaints == []


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
    _verify([UNIT], UNIT.name, tmp_path)


def test_server_units_restart_forever_and_are_hardened_like_the_agent():
    agent = _unit()["Service"]
    hardening = [
        key
        for key in agent
        if key.startswith(("Protect", "Restrict", "NoNew", "Private", "Lock"))
        and key != "PrivateDevices"  # the agent needs cameras and the modem; the server none
    ]
    for path in (SERVER_UNIT, INGEST_UNIT):
        unit = _unit(path)
        service = unit["Service"]
        assert service["Restart"] == "always", path.name
        assert unit["Unit"]["StartLimitIntervalSec"] == "0", path.name
        assert service["User"] != "root", path.name
        for key in hardening:
            assert service.get(key) == agent[key], (path.name, key)
        assert service["PrivateDevices"] == "true", path.name
        assert _values(path, "Service", "EnvironmentFile")[0] == "/etc/classcam/server.env"


def test_the_server_runs_everything_and_each_ingest_worker_has_its_own_account():
    server = _unit(SERVER_UNIT)["Service"]
    assert server["ExecStart"] == f"{VENV_BIN}classcam-server run"
    ingest = _unit(INGEST_UNIT)
    assert ingest["Service"]["ExecStart"] == f"{VENV_BIN}classcam-server ingest"
    # The instance's own file comes last, so its broker account overrides the shared one.
    files = _values(INGEST_UNIT, "Service", "EnvironmentFile")
    assert files == ["/etc/classcam/server.env", "/etc/classcam/ingest-%i.env"]
    # Started after the server on its host, never pulling one in on another host.
    assert "classcam-server.service" in ingest["Unit"]["After"].split()
    for key in ("Wants", "Requires", "BindsTo", "Requisite"):
        assert "classcam-server" not in ingest["Unit"].get(key, ""), key
    # Both look for the keys in the same place, so a worker on the server's host shares them.
    keys = [v for v in _values(INGEST_UNIT, "Service", "Environment") if "KEY_FILE" in v]
    assert keys and keys == [
        v for v in _values(SERVER_UNIT, "Service", "Environment") if "KEY_FILE" in v
    ]


def test_server_unit_verifies(tmp_path: Path):
    assert (Path(sys.executable).parent / "classcam-server").exists()
    _verify([SERVER_UNIT], SERVER_UNIT.name, tmp_path)


def test_ingest_worker_instance_verifies(tmp_path: Path):
    _verify([SERVER_UNIT, INGEST_UNIT], "classcam-ingest@2.service", tmp_path)


def test_ingest_worker_refuses_to_start_without_the_audit_key(tmp_path: Path):
    """The ExecStartPre check, run by sh as systemd would (``$$`` is systemd's literal ``$``)."""
    (line,) = _values(INGEST_UNIT, "Service", "ExecStartPre")
    assert line.startswith("/bin/sh -c '") and line.endswith("'")
    script = line.removeprefix("/bin/sh -c '").removesuffix("'").replace("$$", "$")
    key = tmp_path / "audit.key"
    missing = subprocess.run(
        ["/bin/sh", "-c", script],
        env={"CLASSCAM_AUDIT_KEY_FILE": str(key), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1
    assert f"no audit key at {key}" in missing.stderr
    key.write_bytes(b"k" * 32)
    present = subprocess.run(
        ["/bin/sh", "-c", script],
        env={"CLASSCAM_AUDIT_KEY_FILE": str(key), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert present.returncode == 0, present.stderr


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
