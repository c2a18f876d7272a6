"""``classcam-server``: migrate, register a device, list clips, run until SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ingest_helpers import Harness, make_upload

from common.schemas import AckState
from common.signing import public_key_b64
from ingest_server.cli import main
from simulators.broker import SCHEDULER_USER, SERVER_USER, MosquittoBroker


def test_migrate_register_and_list_clips(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    data = ["--data-dir", str(tmp_path / "var")]
    assert main([*data, "migrate"]) == 0
    key_file = tmp_path / "dev-1.pub"
    key_file.write_text(public_key_b64(key) + "\n")
    assert (
        main([*data, "register-device", "--device-id", "dev-1", "--public-key-file", str(key_file)])
        == 0
    )
    # Same key again: fine. Another key without --replace: refused.
    assert (
        main(
            [*data, "register-device", "--device-id", "dev-1", "--public-key", public_key_b64(key)]
        )
        == 0
    )
    other = public_key_b64(Ed25519PrivateKey.generate())
    assert main([*data, "register-device", "--device-id", "dev-1", "--public-key", other]) == 1
    assert main([*data, "register-device", "--device-id", "dev-2", "--public-key", "nope"]) == 1

    harness = Harness(
        f"sqlite:///{tmp_path / 'var' / 'classcam.db'}", tmp_path / "var" / "evidence"
    )
    try:
        upload = make_upload(tmp_path / "d", key, "dev-1", "up-cli")
        assert harness.upload(upload)[-1].state is AckState.COMPLETE
    finally:
        harness.close()
    capsys.readouterr()
    assert main([*data, "clips"]) == 0
    out = capsys.readouterr().out
    assert "dev-1" in out and "up-cli.mp4" in out


def test_run_consumes_until_sigterm(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CLASSCAM_DATA_DIR": str(tmp_path / "var"),
        "CLASSCAM_MQTT_PORT": str(mosquitto.port),
        "CLASSCAM_MQTT_PASSWORD": mosquitto.accounts.passwords[SERVER_USER],
        "CLASSCAM_MQTT_SCHEDULER_PASSWORD": mosquitto.accounts.passwords[SCHEDULER_USER],
        "CLASSCAM_MQTT_CLIENT_ID": "ingest-cli-test",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest_server.cli", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 20
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "subscribed to $share/ingest/classcam/v1/up/#" in line or not line:
                break
        assert any("subscribed" in line for line in lines), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        lines.append(proc.stdout.read())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(lines)
    assert str(tmp_path / "var" / "classcam.db") in output
    assert str(tmp_path / "var" / "evidence") in output
