"""Render the shipped Mosquitto config (``firmware_config/mosquitto.conf.template``) for one
broker: ``classcam-server broker-config`` writes it for production, the test brokers render
the same file for their own ports and directories."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "firmware_config"
TEMPLATE = CONFIG_DIR / "mosquitto.conf.template"
ACL = CONFIG_DIR / "mosquitto.acl"
# Above the server account's queue bound (max_queued_bytes, 2 GiB) with room for the rest.
DEFAULT_MEMORY_LIMIT = 3 * 1024**3


@dataclass(frozen=True, slots=True)
class BrokerPaths:
    """Everything one broker's config names: ports, files and directories."""

    port: int
    bind: str
    tls_port: int
    tls_bind: str
    cafile: Path
    certfile: Path
    keyfile: Path
    data_dir: Path
    password_file: Path
    acl_file: Path
    log_file: Path
    run_user: str | None = None
    memory_limit: int = DEFAULT_MEMORY_LIMIT


def render_broker_config(paths: BrokerPaths, template: str | None = None) -> str:
    """The Mosquitto config text for ``paths``."""
    text = template if template is not None else TEMPLATE.read_text()
    return text.format(
        port=paths.port,
        bind=paths.bind,
        tls_port=paths.tls_port,
        tls_bind=paths.tls_bind,
        cafile=paths.cafile,
        certfile=paths.certfile,
        keyfile=paths.keyfile,
        data_dir=paths.data_dir,
        password_file=paths.password_file,
        acl_file=paths.acl_file,
        log_file=paths.log_file,
        memory_limit=paths.memory_limit,
        run_user_line=f"user {paths.run_user}" if paths.run_user else "",
    )
