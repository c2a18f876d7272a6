"""Agent config validation and the durable outbox."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import ConfigError, load_config
from edge_agent.outbox import Outbox, OutboxState

EXAMPLE = Path(__file__).resolve().parents[2] / "firmware_config" / "agent.example.toml"


def test_example_config_is_valid_and_documents_defaults():
    config = load_config(EXAMPLE)
    assert config.device_id == "cam-0001"
    assert config.upload.chunk_size == 65536
    assert config.broker.keepalive_s < 300  # under carrier NAT idle timeouts


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('device_id = "a/b"', "device_id"),
        ('device_id = "d"\n[upload]\nchunk_size = 10', "upload.chunk_size"),
        ('device_id = "d"\n[broker]\nprot = "5"', "broker.prot"),
        ('device_id = "d"\n[broker]\nprotocol = "4"', "broker.protocol"),
        ("[camera]\nfps = 15", "device_id"),
        ("device_id = ", "<toml>"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, text: str, field: str):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.field == field
    assert field in str(info.value)


def test_secret_paths_resolve_in_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / "broker-password").write_text("s3cret\n")
    path = tmp_path / "agent.toml"
    path.write_text('device_id = "d"\n')
    config = load_config(path)
    assert config.broker.password_file == tmp_path / "broker-password"
    assert config.broker_password() == "s3cret"


def test_outbox_keeps_entries_until_complete(tmp_path: Path):
    outbox = Outbox(tmp_path)
    clip = outbox.file_path("u1")
    clip.write_bytes(b"x" * 100)
    outbox.enqueue("u1", clip, b"{}", size=100, chunk_size=64, sha256="a" * 64)
    orphan = outbox.file_path("orphan")
    orphan.write_bytes(b"left by a power cut")
    outbox.close()

    reopened = Outbox(tmp_path)
    assert [i.upload_id for i in reopened.pending()] == ["u1"]
    assert not orphan.exists(), "files with no outbox entry are not evidence"
    assert clip.exists()
    reopened.mark_rejected("u1", "signature_invalid")
    assert reopened.count(OutboxState.REJECTED) == 1 and clip.exists()
    reopened.mark_complete("u1")
    assert not clip.exists()
    assert reopened.pending() == []


def test_outbox_entry_survives_sigkill_right_after_enqueue(tmp_path: Path):
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from edge_agent.outbox import Outbox\n"
        "o = Outbox(Path(sys.argv[1]))\n"
        "p = o.file_path('u2'); p.write_bytes(b'y' * 10)\n"
        "o.enqueue('u2', p, b'{}', size=10, chunk_size=64, sha256='b' * 64)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=False)
    assert result.returncode == -9
    outbox = Outbox(tmp_path)
    assert [i.upload_id for i in outbox.pending()] == ["u2"]
    assert os.path.getsize(outbox.file_path("u2")) == 10


def test_secret_paths_default_to_beside_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = tmp_path / "agent.toml"
    path.write_text('device_id = "d"\n')
    config = load_config(path)
    assert config.keys.private_key_file == tmp_path / "device-key.pem"
    assert config.broker.password_file == tmp_path / "broker-password"
