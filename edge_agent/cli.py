"""``classcam-agent``: provision a device, record, cut, upload, run as a service."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.clock import Clock, SystemClock, VirtualClock, to_utc
from common.schemas import ClipKind
from common.signing import generate_private_key, load_private_key, private_key_pem, public_key_b64
from edge_agent.config import AgentConfig, ConfigError, load_config

if TYPE_CHECKING:
    from rich.console import Console

    from edge_agent.camera import CameraSource
    from edge_agent.cameras import EncodedCamera
    from edge_agent.recording import CameraFactory

log = logging.getLogger("classcam.agent")


@functools.cache
def console() -> Console:
    """rich's console on stderr, made on first use: the operator's commands print through it,
    but ``run`` (the service, on a Pi-class box) does not pay the 2 MB that importing rich
    costs."""
    from rich.console import Console

    return Console(stderr=True)


def _parse_time(value: str) -> datetime:
    try:
        return to_utc(datetime.fromisoformat(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from exc


def cmd_provision(args: argparse.Namespace) -> int:
    """Create a device's key pair, broker password and config; print what to register."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    key_path, password_path = out / "device-key.pem", out / "broker-password"
    if key_path.exists() and not args.force:
        console().print(f"[red]{key_path} exists; use --force to replace the device's identity")
        return 2
    key = generate_private_key()
    password = secrets.token_urlsafe(24)
    for path, data in ((key_path, private_key_pem(key)), (password_path, password.encode())):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    template = Path(__file__).resolve().parent.parent / "firmware_config" / "agent.example.toml"
    text = template.read_text().replace('device_id = "cam-0001"', f'device_id = "{args.device_id}"')
    text = text.replace('host = "127.0.0.1"', f'host = "{args.broker_host}"')
    (out / "agent.toml").write_text(text)
    public = public_key_b64(key)
    (out / "device-key.pub").write_text(public + "\n")
    entry = _broker_password_entry(args.device_id, password)
    if entry:
        (out / "broker-passwd-entry").write_text(entry + "\n")
        console().print(
            f"broker: append {out / 'broker-passwd-entry'} to Mosquitto's password_file"
        )
    else:
        console().print(
            "broker: mosquitto_passwd not found; add the password in "
            f"{password_path} to the broker for user {args.device_id}"
        )
    console().print(f"device [bold]{args.device_id}[/bold] provisioned in {out}")
    console().print(
        f"register on the server:\n  classcam-server register-device "
        f"--device-id {args.device_id} --public-key {public}"
    )
    print(public)
    return 0


def _broker_password_entry(username: str, password: str) -> str | None:
    """The hashed line for Mosquitto's password_file, made by Mosquitto's own tool."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "passwd"
        path.touch(mode=0o600)
        subprocess.run([tool, "-b", str(path), username, password], check=True, capture_output=True)
        return path.read_text().strip()


def _clock(args: argparse.Namespace) -> Clock:
    return VirtualClock() if getattr(args, "virtual_clock", False) else SystemClock()


def cmd_record(args: argparse.Namespace, config: AgentConfig) -> int:
    """Record ``--seconds`` of the configured camera into the spool (an installer's check, or
    material for tests); the service records sessions by itself."""
    from edge_agent.cameras import EncodedCamera, open_camera
    from edge_agent.recorder import Recorder
    from edge_agent.spool import Spool

    clock = _clock(args)
    if args.virtual_clock and config.camera.kind != "synthetic":
        console().print("[red]--virtual-clock only works with the synthetic camera")
        return 2
    camera = open_camera(
        config.camera, clock=clock, device_id=config.device_id, recording=config.recording
    )
    spool = Spool(config.spool_dir)
    rec = config.recording
    start = clock.now()
    try:
        if isinstance(camera, EncodedCamera):
            stop = threading.Event()
            timer = threading.Timer(args.seconds, stop.set)
            timer.start()
            ids = camera.record(
                spool, stop, segment_seconds=rec.segment_seconds, session_id=args.session_id
            )
            timer.cancel()
            recording = ", ".join(map(str, ids)) or "none"
        else:
            recorder = Recorder(
                camera,
                spool,
                clock,
                segment_seconds=rec.segment_seconds,
                keyframe_interval_s=rec.keyframe_interval_s,
                bitrate=rec.bitrate,
                session_id=args.session_id,
                preset=rec.preset,
            )
            recording = str(recorder.record_for(args.seconds))
    finally:
        spool.close()
    end = clock.now()
    console().print(f"recording {recording}: {start.isoformat()} → {end.isoformat()}")
    print(f"{start.isoformat()} {end.isoformat()}")
    return 0


def _key(config: AgentConfig) -> Ed25519PrivateKey:
    try:
        return load_private_key(config.keys.private_key_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(config.keys.private_key_file, "keys.private_key_file", str(exc)) from exc


def cmd_cut(args: argparse.Namespace, config: AgentConfig) -> int:
    """Cut a window from the spool into the outbox."""
    from edge_agent.clips import ClipRequest, cut_and_enqueue
    from edge_agent.outbox import Outbox
    from edge_agent.spool import Spool

    clock = SystemClock()
    # Read-only: a running recorder owns the spool; cutting beside it must not disturb it.
    spool, outbox = Spool(config.spool_dir, read_only=True), Outbox(config.outbox_dir, clock)
    request = ClipRequest(start=args.start, end=args.end, session_id=args.session_id)
    item = cut_and_enqueue(
        spool,
        outbox,
        _key(config),
        request,
        device_id=config.device_id,
        chunk_size=config.upload.chunk_size,
        clock=clock,
    )
    console().print(f"cut {item.size} bytes into upload {item.upload_id} (sha256 {item.sha256})")
    print(item.upload_id)
    return 0


def cmd_reference(args: argparse.Namespace, config: AgentConfig) -> int:
    """At installation: a still of the classroom view, queued for upload as the reference the
    server compares later clips with (to tell a camera turned away or swapped)."""
    from edge_agent.cameras import open_camera

    clock = SystemClock()
    camera = open_camera(
        config.camera, clock=clock, device_id=config.device_id, recording=config.recording
    )
    return queue_reference(config, camera, clock)


def queue_reference(config: AgentConfig, camera: CameraSource | EncodedCamera, clock: Clock) -> int:
    """What ``reference`` does with ``camera`` on ``clock`` (``simulators.sim_agent`` passes a
    replay's camera and shared clock): one still, queued as the installation's reference."""
    import cv2

    from edge_agent.cameras import EncodedCamera
    from edge_agent.clips import enqueue_snapshot
    from edge_agent.outbox import Outbox

    if isinstance(camera, EncodedCamera):
        console().print(
            "[red]this camera gives no stills on its own; take the reference with "
            "the `snapshot` command while a session records"
        )
        return 2
    camera.open()
    try:
        frame = camera.read()
    finally:
        camera.close()
    ok, jpeg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        console().print("[red]JPEG encoding failed")
        return 1
    outbox = Outbox(config.outbox_dir, clock)
    item = enqueue_snapshot(
        outbox,
        _key(config),
        jpeg.tobytes(),
        frame.wall,
        width=frame.image.shape[1],
        height=frame.image.shape[0],
        device_id=config.device_id,
        chunk_size=config.upload.chunk_size,
        clock=clock,
        kind=ClipKind.REFERENCE,
    )
    console().print(
        f"reference view queued as upload {item.upload_id}; "
        "the service (or `upload --until-empty`) sends it"
    )
    print(item.upload_id)
    return 0


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def cmd_upload(args: argparse.Namespace, config: AgentConfig) -> int:
    """Upload the outbox: until it is empty (``--until-empty``) or until stopped."""
    from edge_agent.outbox import Outbox, OutboxState
    from edge_agent.uplink import MqttLink, Uploader

    stop = _stop_on_signals()
    outbox = Outbox(config.outbox_dir)
    link = MqttLink(config, config.broker_password())
    uploader = Uploader(link, outbox, config.upload)
    link.start()
    try:
        if args.until_empty:
            pending = outbox.pending()
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeRemainingColumn(),
                console=console(),
                disable=not console().is_terminal,
            ) as progress:
                task = progress.add_task("uploading clips", total=len(pending))
                for item in pending:
                    if stop.is_set():
                        break
                    state = uploader.upload(item, stop)
                    # Asked for now: try again at once, until done or its budget is spent.
                    while state is None and not stop.is_set():
                        current = outbox.get(item.upload_id)
                        if current is None or current.state is not OutboxState.PENDING:
                            break
                        if current.parked or current.refusals > item.refusals:
                            break  # spent, or refused for now: the service tries later
                        state = uploader.upload(current, stop)
                    log.info("upload %s: %s", item.upload_id, state)
                    progress.advance(task)
        else:
            uploader.run(stop)
    finally:
        link.stop()
    left = outbox.count(OutboxState.PENDING)
    rejected = outbox.count(OutboxState.REJECTED)
    console().print(
        f"outbox: {left} pending, {rejected} rejected; {uploader.stats.chunks_sent} chunks sent"
    )
    return 0 if left == 0 and rejected == 0 else 1


def cmd_run(args: argparse.Namespace, config: AgentConfig) -> int:
    """The device's service: sessions, commands, uploads, events, heartbeats, until SIGTERM."""
    return run_service(config, clock=SystemClock())


def run_service(
    config: AgentConfig, *, clock: Clock, camera_factory: CameraFactory | None = None
) -> int:
    """What ``run`` does, on ``clock``, with the modem on the same clock and the configured
    camera unless ``camera_factory`` is given (``simulators.sim_agent`` passes a replay's
    shared clock and planned camera)."""
    from edge_agent.service import AgentService

    stop = _stop_on_signals()
    service = AgentService(
        config, clock=clock, camera_factory=camera_factory, modem=_modem(config, clock)
    )
    service.start()
    # Plain stderr, not rich: the service never loads rich (see ``console``).
    print(f"agent {config.device_id} running; state in {config.state_dir}", file=sys.stderr)
    try:
        stop.wait()
    finally:
        service.stop()
    return 0


def _modem(config: AgentConfig, clock: Clock) -> Any:
    """The 4G modem driver when the box has one configured."""
    if not config.modem.port:
        return None
    from edge_agent.modem import SerialModem

    modem = SerialModem(
        config.modem.port,
        baudrate=config.modem.baudrate,
        clock=clock,
        command_timeout=config.modem.command_timeout_s,
        family=config.modem.family,
    )
    try:
        modem.open()
    except Exception as exc:  # the agent records without a modem rather than not at all
        log.error("modem on %s unavailable: %s", config.modem.port, exc)
    return modem


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="classcam-agent", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("provision", help="create a device's key, broker password and config")
    p.add_argument("--device-id", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--broker-host", default="127.0.0.1")
    p.add_argument("--force", action="store_true")

    for name, help_ in (
        ("record", "record the camera into the spool"),
        ("cut", "cut a window from the spool into the outbox"),
        ("upload", "upload the outbox to the server"),
        ("reference", "queue a still of the classroom view (at installation)"),
        ("run", "run as the device's service"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", type=Path, required=True)
        if name == "record":
            p.add_argument("--seconds", type=float, required=True)
            p.add_argument("--session-id")
            p.add_argument(
                "--virtual-clock",
                action="store_true",
                help="synthetic time: record as fast as the encoder goes",
            )
        if name == "cut":
            p.add_argument("--start", type=_parse_time, required=True)
            p.add_argument("--end", type=_parse_time, required=True)
            p.add_argument("--session-id")
        if name == "upload":
            p.add_argument("--until-empty", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "provision":
        return cmd_provision(args)
    try:
        config = load_config(args.config)
        handler = {
            "record": cmd_record,
            "cut": cmd_cut,
            "upload": cmd_upload,
            "reference": cmd_reference,
            "run": cmd_run,
        }[args.command]
        return handler(args, config)
    except ConfigError as exc:
        console().print(f"[red]config error:[/red] {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
