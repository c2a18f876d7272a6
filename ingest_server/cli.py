"""``classcam-server``: migrate the database, register devices, run ingest, list clips.

Configuration comes from ``CLASSCAM_*`` environment variables (``ingest_server.settings``);
``--data-dir`` and ``--database-url`` override the two most used ones.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, select

from common.clock import Clock, SystemClock
from ingest_server import audit, crud
from ingest_server.consumer import replay_dead_letters
from ingest_server.core import Role, run_server
from ingest_server.db import (
    SessionFactory,
    make_engine,
    make_session_factory,
    migrate,
    schema_revision,
)
from ingest_server.device_messages import DeviceMessages
from ingest_server.ingest import IngestProcessor
from ingest_server.models import DeadLetter
from ingest_server.settings import SERVER_USER, Settings
from ingest_server.stores import open_store

log = logging.getLogger("classcam.server")


def _console() -> Console:
    # Made per command, not at import, so the terminal width (COLUMNS) is read when used.
    return Console()


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.database_url:
        overrides["database_url"] = args.database_url
    return Settings(**overrides)  # type: ignore[arg-type]


def _writer_sessions(settings: Settings, engine: Engine) -> SessionFactory:
    # Every session that may append to the audit log carries the server's audit key.
    return make_session_factory(engine, audit.load_key(settings.audit_key_file))


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    migrate(settings.database_url)
    _console().print(f"database at {settings.describe()['database']} is up to date")
    return 0


def cmd_register_device(settings: Settings, args: argparse.Namespace) -> int:
    key = args.public_key
    if args.public_key_file:
        key = Path(args.public_key_file).read_text().strip()
    if not key:
        _console().print("[red]give --public-key or --public-key-file[/red]")
        return 2
    engine = make_engine(settings.database_url)
    try:
        with _writer_sessions(settings, engine).begin() as session:
            crud.register_device(session, args.device_id, key, args.classroom_id, args.replace)
    except (ValueError, crud.DeviceExists, crud.ClassroomHasCamera) as exc:
        _console().print(f"[red]{exc}[/red]")
        return 1
    finally:
        engine.dispose()
    _console().print(f"device {args.device_id} registered")
    return 0


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    return serve_until_signalled(settings, SystemClock())


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    """One more ingest worker on the shared subscription (docs/deployment.md)."""
    current, head = schema_revision(settings.database_url)
    if current != head:
        # Workers never migrate: several starting at once would race over the schema.
        log.error(
            "the database is at migration %s, this code needs %s: run `classcam-server migrate`"
            " (or start `classcam-server run`) first",
            current or "(none)",
            head,
        )
        return 1
    if not settings.audit_key_file.is_file():
        # Made on first use by `run`: a worker making its own would write rows that fail
        # `audit verify` for ever.
        log.error(
            "no audit key at %s: give every worker the key `classcam-server run` uses"
            " (CLASSCAM_AUDIT_KEY_FILE)",
            settings.audit_key_file,
        )
        return 1
    if settings.staging != "database":
        # With local staging each process keeps the chunks it received on its own disk, and
        # the one that gets an upload's fin never has them all.
        log.error(
            "an ingest worker needs staging in the database: set CLASSCAM_STAGING=database"
            " for every process of the deployment (`run` too)"
        )
        return 1
    if settings.mqtt_username == SERVER_USER:
        # The broker binds client id to username: this worker and `run` would keep
        # disconnecting each other.
        log.error(
            "an ingest worker needs a broker account of its own (CLASSCAM_MQTT_USERNAME),"
            " not %s, which `run` uses",
            SERVER_USER,
        )
        return 1
    if not settings.shared_group:
        log.error("an ingest worker needs a shared subscription (CLASSCAM_SHARED_GROUP)")
        return 1
    return serve_until_signalled(settings, SystemClock(), role="ingest")


def serve_until_signalled(settings: Settings, clock: Clock, role: Role = "all") -> int:
    """What ``run`` does, on ``clock``: migrate, then ingest, schedule and serve the API until
    SIGTERM or SIGINT (``simulators.sim_server`` passes a replay's simulated clock); in the
    ``ingest`` role, only ingest (the database must be migrated already)."""
    if role == "all":
        migrate(settings.database_url)
    # Logged, not printed: under systemd stderr reaches the journal unbuffered.
    log.info(
        "role: %s (MQTT account %s), staging: %s", role, settings.mqtt_username, settings.staging
    )
    for what, where in settings.describe().items():
        log.info("%s: %s", what, where)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_server(settings, stop, clock, role=role)

    asyncio.run(serve())
    return 0


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    """Bulk setup from JSON or CSV: all rows or none."""
    from ingest_server.setup_import import ImportFailed, import_rows, read_rows

    console = _console()
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        rows = read_rows(Path(args.file), args.kind)
        with _writer_sessions(settings, engine).begin() as session:
            counts = import_rows(session, rows, settings)
    except ImportFailed as exc:
        table = Table(title=f"{args.file}: nothing imported", title_style="bold red")
        for column in ("section", "line", "field", "problem"):
            table.add_column(column, overflow="fold")
        for err in exc.errors:
            table.add_row(err.section, str(err.line), err.field, err.message)
        console.print(table)
        for err in exc.errors:
            print(err, file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        console.print(f"[red]cannot read {args.file}: {exc}[/red]")
        return 1
    finally:
        engine.dispose()
    console.print("imported: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n))
    return 0


def cmd_clips(settings: Settings, args: argparse.Namespace) -> int:
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            clips = crud.list_clips(session, args.device_id, args.limit)
    finally:
        engine.dispose()
    table = Table(title=f"clips in {settings.evidence_dir}")
    for column in ("stored (UTC)", "device", "session", "kind", "cut start", "s", "MB"):
        table.add_column(column, no_wrap=True)
    table.add_column("path", overflow="fold")
    for clip in clips:
        table.add_row(
            clip.stored_at.strftime("%Y-%m-%d %H:%M:%S"),
            clip.device_id,
            clip.session_id or "",
            clip.kind,
            clip.cut_start.strftime("%Y-%m-%d %H:%M:%S"),
            f"{clip.duration_s:.1f}",
            f"{clip.size / 1e6:.2f}",
            clip.path,
        )
    _console().print(table)
    return 0


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    """Make, list or revoke API tokens (``ingest_server.auth``); a token is printed once."""
    from datetime import timedelta

    from common.clock import utc_now
    from ingest_server import auth

    console, now = _console(), utc_now()
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with _writer_sessions(settings, engine).begin() as session:
            if args.token_command == "create":
                expires = now + timedelta(days=args.expires_days) if args.expires_days else None
                row, token = auth.create_token(
                    session,
                    auth.Role(args.role),
                    now,
                    name=args.name or "",
                    institution_id=args.institution,
                    lecturer_id=args.lecturer,
                    expires_at=expires,
                )
                # The token alone on stdout (TOKEN=$(classcam-server token create ...)); the
                # rest on stderr. It is not stored: this is the only time it is shown.
                print(token)
                print(f"token {row.id} ({row.role}, {row.name}) made; shown once", file=sys.stderr)
            elif args.token_command == "revoke":
                row = auth.revoke_token(session, args.token_id, now)
                console.print(f"token {row.id} ({row.name}) revoked")
            else:
                table = Table(title="API tokens")
                for column in ("id", "name", "role", "scope", "created", "expires", "revoked"):
                    table.add_column(column, no_wrap=True)
                for row in auth.list_tokens(session, now, include_inactive=args.all):
                    table.add_row(
                        str(row.id),
                        row.name,
                        row.role,
                        row.institution_id or row.lecturer_id or "",
                        f"{row.created_at:%Y-%m-%d %H:%M}",
                        f"{row.expires_at:%Y-%m-%d %H:%M}" if row.expires_at else "",
                        f"{row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "",
                    )
                console.print(table)
    except auth.TokenRefused as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    finally:
        engine.dispose()
    return 0


def cmd_tls_init(settings: Settings, args: argparse.Namespace) -> int:
    """A CA (kept when DIR has one) and a broker certificate naming --host/--ip."""
    from ingest_server.tls_certs import make_broker_certificates

    try:
        files = make_broker_certificates(Path(args.out), args.host or [], args.ip or [])
    except ValueError as exc:
        _console().print(f"[red]{exc}[/red]")
        return 2
    _console().print(
        f"CA {files.ca_cert} (give it to every device as broker.ca_file; keep {files.ca_key} "
        f"offline)\nbroker certificate {files.server_cert}, key {files.server_key} (0600: "
        "chown it to the broker's user)"
    )
    return 0


def cmd_broker_config(settings: Settings, args: argparse.Namespace) -> int:
    """Write the shipped Mosquitto config for this machine's paths."""
    from ingest_server.broker_config import BrokerPaths, render_broker_config

    tls = Path(args.tls_dir)
    text = render_broker_config(
        BrokerPaths(
            port=args.port,
            bind=args.bind,
            tls_port=args.tls_port,
            tls_bind=args.tls_bind,
            cafile=tls / "ca.crt",
            certfile=tls / "server.crt",
            keyfile=tls / "server.key",
            data_dir=Path(args.broker_data_dir),
            password_file=Path(args.password_file),
            acl_file=Path(args.acl_file),
            log_file=Path(args.log_file),
            run_user=args.run_user,
            memory_limit=args.memory_limit,
        )
    )
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        _console().print(f"broker config written to {args.out}")
    return 0


def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    """``audit verify``: walk the audit log's hash chain to its head with the audit key (the
    settings' file, or ``--key-file``); 1 at the first bad row, 2 without a key."""
    try:
        key = audit.load_key(Path(args.key_file or settings.audit_key_file), create=False)
    except audit.AuditKeyError as exc:
        print(f"audit log not verified: {exc}")
        return 2
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            report = audit.verify(session, key)
    finally:
        engine.dispose()
    if not report.ok:
        where = f"seq {report.bad_seq}" if report.bad_seq is not None else "its head"
        print(
            f"audit log BROKEN at {where}: {report.problem}; {report.rows} rows fine before it"
            f" (key {report.key_id})"
        )
        return 1
    # The head hash, written down elsewhere, also tells a chain rewritten from the start by
    # someone who holds the key.
    print(
        f"audit log intact: {report.rows} rows, head seq {report.head_seq} {report.head_hash}"
        f" (key {report.key_id})"
    )
    return 0


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    """Write the verifiable archive of ``--session`` (repeatable: a case) to ``--out``,
    recorded in the audit log as exported by ``cli:<user>`` before it is moved into place."""
    import getpass
    import os
    from zoneinfo import ZoneInfo

    from sqlalchemy import true

    from ingest_server.export import ExportRefused, export_sessions, load_export_key
    from ingest_server.models import ClassSession

    out = Path(args.out).resolve()
    engine = make_engine(settings.database_url)
    try:
        factory = _writer_sessions(settings, engine)
        with factory() as db:
            rows = [db.get(ClassSession, session_id) for session_id in dict.fromkeys(args.session)]
        unknown = [s for s, row in zip(dict.fromkeys(args.session), rows, strict=True) if not row]
        if unknown:
            print(f"no session {', '.join(unknown)}", file=sys.stderr)
            return 1
        result = export_sessions(
            factory,
            open_store(settings),
            [row for row in rows if row is not None],
            directory=out.parent,
            audit_key=audit.load_key(settings.audit_key_file, create=False),
            signing_key=load_export_key(settings.export_key_file),
            now=SystemClock().now(),
            actor=f"cli:{getpass.getuser()}",
            reader_scope=true(),  # the operator reads everything: reasons keep every param
            lang=args.lang,
            tz=ZoneInfo(settings.timezone),
        )
    except (ExportRefused, audit.KeyFileError) as exc:
        print(f"export refused: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    os.replace(result.path, out)
    facts = result.facts
    print(
        f"{out}: {len(facts.session_ids)} session(s), {facts.clips} clip(s), {facts.photos}"
        f" photo(s), {facts.entries} audit entries, head seq {facts.head_seq} {facts.head_hash};"
        f" sha256 {result.sha256} (recorded in the audit log)"
    )
    return 0


def cmd_export_key(settings: Settings, args: argparse.Namespace) -> int:
    """Print the export signing key's public half (PEM) and fingerprint, for a bureau to
    publish and auditors to pin (``verify.py --server-key``); made on first use."""
    from ingest_server.export import key_fingerprint, load_export_key, public_key_pem

    key = load_export_key(settings.export_key_file)
    sys.stdout.write(public_key_pem(key).decode())
    print(f"fingerprint {key_fingerprint(key)}", file=sys.stderr)
    return 0


def cmd_s3_bucket(settings: Settings, args: argparse.Namespace) -> int:
    """Create the evidence bucket with Object Lock (and a default retention of the settings'
    mode and days), or check that an existing one has it; exit 1 if it has not."""
    from ingest_server.errors import StoreError
    from ingest_server.s3_store import create_locked_bucket, make_client

    bucket = args.bucket or settings.s3_bucket
    try:
        created = create_locked_bucket(
            make_client(settings), bucket, settings.s3_lock_mode, settings.s3_retention_days
        )
    except StoreError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    state = "created with" if created else "already has"
    print(
        f"s3://{bucket} {state} Object Lock; evidence is locked {settings.s3_lock_mode}"
        f" for {settings.s3_retention_days} days from when it is stored"
    )
    if not args.upload_local and args.prune_cache_days is None:
        return 0
    from datetime import UTC, datetime, timedelta

    from ingest_server.s3_store import S3EvidenceStore

    store = S3EvidenceStore.from_settings(settings.model_copy(update={"s3_bucket": bucket}))
    if args.upload_local:
        try:
            put, present = store.upload_local()
        except StoreError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 1
        print(f"local files: {put} put to the bucket, locked; {present} already there")
    if args.prune_cache_days is not None:
        cutoff = datetime.now(UTC) - timedelta(days=args.prune_cache_days)
        deleted, kept = store.prune_cache(cutoff)
        print(
            f"local cache {settings.evidence_dir}: {deleted} file(s) deleted (safe in the"
            f" bucket), {kept} kept (not in the bucket yet)"
        )
    return 0


def cmd_dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    """List the messages ingest gave up on; ``--replay`` feeds them back through the
    processor (events and presence included) and marks those that now pass."""
    engine = make_engine(settings.database_url)
    try:
        factory = _writer_sessions(settings, engine)
        if args.replay:
            # A replayed message is old news: stamped by the device's word (with the usual
            # floors), never as if it happened now.
            fleet = DeviceMessages(factory, settings.heartbeat_timeout_s, caught_up=lambda: False)
            processor = IngestProcessor(
                factory,
                open_store(settings),
                settings,
                device_messages=fleet.handle,
            )
            replayed, failed = replay_dead_letters(processor, args.id or None)
            _console().print(f"replayed {replayed}, still failing {failed}")
            return 1 if failed else 0
        with factory() as db:
            query = select(DeadLetter).order_by(DeadLetter.id.desc()).limit(args.limit)
            letters = list(db.scalars(query))
    finally:
        engine.dispose()
    table = Table(title="dead letters")
    for column in ("id", "last (UTC)", "tries", "replayed", "topic", "bytes", "error"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        table.add_row(
            str(letter.id),
            letter.last_at.strftime("%Y-%m-%d %H:%M:%S"),
            str(letter.attempts),
            letter.replayed_at.strftime("%Y-%m-%d %H:%M:%S") if letter.replayed_at else "",
            letter.topic,
            str(len(letter.payload)),
            letter.error,
        )
    _console().print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``classcam-server`` argument parser."""
    parser = argparse.ArgumentParser(prog="classcam-server", description=__doc__)
    parser.add_argument("--data-dir", help="where the SQLite file and evidence live (./var)")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in data dir)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="create or upgrade the database schema")
    register = sub.add_parser("register-device", help="allow a device to upload")
    register.add_argument("--device-id", required=True)
    key = register.add_mutually_exclusive_group(required=True)
    key.add_argument("--public-key", help="raw Ed25519 public key, base64")
    key.add_argument("--public-key-file", help="file holding that base64 key")
    register.add_argument("--classroom-id")
    register.add_argument("--replace", action="store_true", help="change an existing key")
    sub.add_parser("run", help="migrate, then ingest, schedule and serve the API until SIGTERM")
    sub.add_parser(
        "ingest",
        help="one more ingest worker on the shared subscription (no scheduler, no API);"
        " its own MQTT account in CLASSCAM_MQTT_USERNAME",
    )
    imp = sub.add_parser("import", help="bulk setup from a JSON or CSV file")
    imp.add_argument("file")
    imp.add_argument("--kind", help="the CSV's section (default: the file's stem)")
    tls = sub.add_parser("tls-init", help="make a CA and the broker's TLS certificate")
    tls.add_argument("--out", required=True, help="directory for ca.crt/key, server.crt/key")
    tls.add_argument("--host", action="append", help="broker DNS name (repeatable)")
    tls.add_argument("--ip", action="append", help="broker IP address (repeatable)")
    bc = sub.add_parser("broker-config", help="write the Mosquitto config (firmware_config)")
    bc.add_argument("--out", default="-", help="file to write (default: stdout)")
    bc.add_argument("--port", type=int, default=1883, help="plain listener, for the server")
    bc.add_argument("--bind", default="127.0.0.1")
    bc.add_argument("--tls-port", type=int, default=8883, help="TLS listener, for devices")
    bc.add_argument("--tls-bind", default="0.0.0.0")
    bc.add_argument("--tls-dir", default="/etc/mosquitto/classcam-tls")
    bc.add_argument("--broker-data-dir", default="/var/lib/mosquitto")
    bc.add_argument("--password-file", default="/etc/mosquitto/classcam.passwd")
    bc.add_argument("--acl-file", default="/etc/mosquitto/classcam.acl")
    bc.add_argument("--log-file", default="/var/log/mosquitto/mosquitto.log")
    bc.add_argument("--run-user", default="mosquitto")
    bc.add_argument("--memory-limit", type=int, default=3 * 1024**3)
    dead = sub.add_parser("dead-letters", help="messages ingest gave up on; --replay them")
    dead.add_argument("--replay", action="store_true", help="feed them back through ingest")
    dead.add_argument("--id", type=int, action="append", help="only this one (repeatable)")
    dead.add_argument("--limit", type=int, default=50)
    export = sub.add_parser("export", help="write a verifiable archive of sessions (a case)")
    export.add_argument("--session", action="append", required=True, help="a session id (repeat)")
    export.add_argument("--out", required=True, help="the .zip to write")
    export.add_argument(
        "--lang", default="zh-CN", choices=["zh-CN", "en"], help="reasons' language"
    )
    sub.add_parser("export-key", help="print the export signing key (PEM) to publish and pin")
    bucket = sub.add_parser(
        "s3-bucket", help="create the S3 evidence bucket with Object Lock, or check it has it"
    )
    bucket.add_argument("--bucket", help="the bucket (default: the settings' s3_bucket)")
    bucket.add_argument(
        "--prune-cache-days",
        type=float,
        help="then delete local copies unread this many days that the bucket holds",
    )
    bucket.add_argument(
        "--upload-local",
        action="store_true",
        help="then put every local file the bucket lacks (moving from the filesystem store)",
    )
    clips = sub.add_parser("clips", help="list stored clips")
    clips.add_argument("--device-id")
    clips.add_argument("--limit", type=int, default=50)
    token = sub.add_parser("token", help="make, list or revoke API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="make a token and print it (once)")
    create.add_argument(
        "--role", required=True, choices=["admin", "supervisor", "institution", "lecturer"]
    )
    create.add_argument("--institution", help="the institution's id (role institution)")
    create.add_argument("--lecturer", help="the lecturer's id (role lecturer)")
    create.add_argument("--name", help="who or what holds it (shown in lists and the audit)")
    create.add_argument("--expires-days", type=float, help="valid this many days (default: ever)")
    listing = token_sub.add_parser("list", help="tokens that still let someone in")
    listing.add_argument("--all", action="store_true", help="revoked and expired ones too")
    revoke = token_sub.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id", type=int)
    audit_parser = sub.add_parser("audit", help="the evidence audit log")
    audit_sub = audit_parser.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify", help="check the hash chain; exit 1 at the first bad row"
    )
    verify.add_argument("--key-file", help="the audit key (default: the settings' audit_key_file)")
    return parser


COMMANDS = {
    "migrate": cmd_migrate,
    "register-device": cmd_register_device,
    "run": cmd_run,
    "ingest": cmd_ingest,
    "clips": cmd_clips,
    "dead-letters": cmd_dead_letters,
    "export": cmd_export,
    "export-key": cmd_export_key,
    "s3-bucket": cmd_s3_bucket,
    "import": cmd_import,
    "audit": cmd_audit,
    "tls-init": cmd_tls_init,
    "broker-config": cmd_broker_config,
    "token": cmd_token,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``classcam-server`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = _settings(args)
    return COMMANDS[args.command](settings, args)


if __name__ == "__main__":
    sys.exit(main())
