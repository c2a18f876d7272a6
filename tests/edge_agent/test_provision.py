"""``classcam-agent provision``: a device's identity, secrets and config in one step."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from common.signing import load_private_key, public_key_b64
from edge_agent.config import load_config


def test_provision_makes_key_password_entry_and_a_valid_config(tmp_path: Path):
    out = tmp_path / "cam-0042"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_agent.cli",
            "provision",
            "--device-id",
            "cam-0042",
            "--out",
            str(out),
            "--broker-host",
            "broker.example.org",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    public = result.stdout.strip().splitlines()[-1]
    key_file, password_file = out / "device-key.pem", out / "broker-password"
    for secret in (key_file, password_file):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert public_key_b64(load_private_key(key_file)) == public
    assert "register-device --device-id cam-0042" in result.stderr
    entry = (out / "broker-passwd-entry").read_text().strip()
    assert entry.startswith("cam-0042:$7$"), "a hashed Mosquitto password line"
    assert password_file.read_text() not in entry
    config = load_config(out / "agent.toml")
    assert config.device_id == "cam-0042"
    assert config.broker.host == "broker.example.org"
    assert config.keys.private_key_file == key_file
    toml = (out / "agent.toml").read_text()
    assert password_file.read_text() not in toml and "PRIVATE KEY" not in toml


def test_provision_refuses_to_overwrite_an_identity(tmp_path: Path):
    args = [
        sys.executable,
        "-m",
        "edge_agent.cli",
        "provision",
        "--device-id",
        "cam-1",
        "--out",
        str(tmp_path),
    ]
    subprocess.run(args, check=True, capture_output=True)
    key = (tmp_path / "device-key.pem").read_bytes()
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 2 and "--force" in again.stderr
    assert (tmp_path / "device-key.pem").read_bytes() == key
