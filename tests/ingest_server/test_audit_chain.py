"""The audit log's chain (issue 8, Deliver 7): ``classcam-server audit verify`` passes an intact
log and names the first bad row of one whose rows were edited, inserted or deleted, or whose
tail was cut; the database refuses UPDATE and DELETE on its own. Rows are HMACs keyed by a file
outside the database: rows forged without that key are found even when the head is moved to
them. On SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ingest_server import audit, cli
from ingest_server.db import SessionFactory, make_engine, make_session_factory, migrate
from ingest_server.models import AuditEntry, AuditHead


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
    else:
        url = request.getfixturevalue("pg_url")
        migrate(url)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def audit_key(tmp_path: Path) -> audit.AuditKey:
    """The server's key, in the data dir ``verify_cli`` names (made here, as on first use)."""
    return audit.load_key(tmp_path / "audit.key")


@pytest.fixture
def factory(engine: Engine, audit_key: audit.AuditKey) -> SessionFactory:
    return make_session_factory(engine, audit_key)


def _write_chain(factory: SessionFactory, transactions: int = 3) -> None:
    for n in range(transactions):
        with factory.begin() as db:
            audit.record(db, "clip_stored", "clip", str(n), "device:cam-1", {"n": n})
            audit.record(db, "viewed", "session", f"s{n}", "supervisor:王", {"route": "/x"})


def verify_cli(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``classcam-server audit verify``: its exit status and what it printed."""
    status = cli.main(["--data-dir", str(tmp_path), "--database-url", db_url, "audit", "verify"])
    return status, capsys.readouterr().out


def _tamper(engine: Engine, statements: Callable[[Connection], None]) -> None:
    """Run ``statements`` as someone with the database's password would: triggers off first."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
            conn.execute(text("ALTER TABLE audit_head DISABLE TRIGGER USER"))
        else:
            for name in ("audit_log_no_update", "audit_log_no_delete", "audit_head_forward"):
                conn.execute(text(f"DROP TRIGGER {name}"))
        statements(conn)


def _hash_of(conn: Connection, seq: int) -> str:
    return str(conn.execute(text("SELECT hash FROM audit_log WHERE seq = :s"), {"s": seq}).scalar())


def test_an_intact_chain_verifies(
    engine: Engine,
    factory: SessionFactory,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _write_chain(factory)
    status, out = verify_cli(db_url, tmp_path, capsys)
    assert status == 0, out
    assert "intact: 6 rows, head seq 6" in out
    with factory() as db:
        rows = db.scalars(select(AuditEntry).order_by(AuditEntry.seq)).all()
        head = db.get(AuditHead, 1)
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
    assert head is not None and (head.seq, head.hash) == (6, rows[-1].hash)


def test_an_empty_log_verifies(
    engine: Engine,
    factory: SessionFactory,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert verify_cli(db_url, tmp_path, capsys)[0] == 0


def test_a_rolled_back_transaction_leaves_no_row(factory: SessionFactory) -> None:
    with pytest.raises(RuntimeError), factory.begin() as db:
        audit.record(db, "viewed", "session", "s", "anonymous")
        raise RuntimeError("the request failed")
    with factory() as db:
        assert audit.verify(db).rows == 0


def test_concurrent_appenders_make_one_chain(factory: SessionFactory) -> None:
    """Threads appending at once never fork the chain (the append lock, or SQLite's)."""

    def append(n: int) -> None:
        for i in range(10):
            with factory.begin() as db:
                audit.record(db, "viewed", "session", f"s{n}-{i}", f"t{n}")

    threads = [threading.Thread(target=append, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with factory() as db:
        report = audit.verify(db)
    assert report.ok and report.rows == 40, report


def test_the_database_refuses_update_and_delete(engine: Engine, factory: SessionFactory) -> None:
    _write_chain(factory, 1)
    for statement in (
        "UPDATE audit_log SET details = '{}' WHERE seq = 1",
        "DELETE FROM audit_log WHERE seq = 2",
        "UPDATE audit_head SET seq = 1",
        "DELETE FROM audit_head",
    ):
        with (
            pytest.raises(DBAPIError, match=r"append-only|only moves forward"),
            engine.begin() as conn,
        ):
            conn.execute(text(statement))
    if engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text("TRUNCATE audit_log"))
    with factory() as db:
        assert audit.verify(db).rows == 2


def test_an_edited_row_is_found(
    engine: Engine,
    factory: SessionFactory,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _write_chain(factory)
    _tamper(
        engine,
        lambda c: c.execute(
            text("UPDATE audit_log SET details = :d WHERE seq = 3"), {"d": '{"n":9}'}
        ),
    )
    status, out = verify_cli(db_url, tmp_path, capsys)
    assert status == 1
    assert "BROKEN at seq 3" in out and "edited" in out


def test_an_edited_actor_with_its_hash_recomputed_breaks_the_next_row(
    engine: Engine,
    factory: SessionFactory,
    audit_key: audit.AuditKey,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Someone who holds the key as well as the database: the chain still tells."""
    _write_chain(factory)

    def forge(conn: Connection) -> None:
        row = conn.execute(text("SELECT * FROM audit_log WHERE seq = 2")).mappings().one()
        fields = (row["action"], row["subject_type"], row["subject_id"], "nobody", row["details"])
        forged = audit.entry_hash(audit_key, 2, _at(conn, 2), *fields, row["prev_hash"])
        conn.execute(
            text("UPDATE audit_log SET actor = 'nobody', hash = :h WHERE seq = 2"), {"h": forged}
        )

    _tamper(engine, forge)
    status, out = verify_cli(db_url, tmp_path, capsys)
    assert status == 1 and "BROKEN at seq 3" in out and "prev_hash" in out


def _at(conn: Connection, seq: int) -> object:
    with Session(bind=conn) as db:
        row = db.get(AuditEntry, seq)
        assert row is not None
        return row.at


def test_a_row_inserted_in_the_middle_is_found(
    engine: Engine,
    factory: SessionFactory,
    audit_key: audit.AuditKey,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Someone who holds the key as well as the database: the chain still tells."""
    _write_chain(factory)

    def insert(conn: Connection) -> None:
        for seq in range(6, 2, -1):  # make room at seq 3
            conn.execute(
                text("UPDATE audit_log SET seq = :n WHERE seq = :s"), {"n": seq + 1, "s": seq}
            )
        prev = _hash_of(conn, 2)
        at = _at(conn, 2)
        fields = ("verdict_changed", "session", "s1", "system:verdict-keeper", '{"to":"verified"}')
        digest = audit.entry_hash(audit_key, 3, at, *fields, prev)  # type: ignore[arg-type]
        conn.execute(
            text(
                "INSERT INTO audit_log (seq, at, action, subject_type, subject_id, actor,"
                " details, prev_hash, hash) VALUES (3, :at, :a, :t, :i, :w, :d, :p, :h)"
            ),
            dict(zip("atiwd", fields, strict=True), at=at, p=prev, h=digest),
        )
        conn.execute(text("UPDATE audit_head SET seq = 7, hash = :h"), {"h": _hash_of(conn, 7)})

    _tamper(engine, insert)
    status, out = verify_cli(db_url, tmp_path, capsys)
    assert status == 1
    # The forged row itself chains onto row 2; the row it pushed down no longer fits.
    assert "BROKEN at seq 4" in out, out


def test_a_row_appended_behind_the_heads_back_is_found(
    engine: Engine,
    factory: SessionFactory,
    audit_key: audit.AuditKey,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Someone who holds the key as well as the database: the chain still tells."""
    _write_chain(factory)

    def append(conn: Connection) -> None:
        prev, at = _hash_of(conn, 6), _at(conn, 6)
        fields = ("exported", "session", "s1", "nobody", "{}")
        digest = audit.entry_hash(audit_key, 7, at, *fields, prev)  # type: ignore[arg-type]
        conn.execute(
            text(
                "INSERT INTO audit_log (seq, at, action, subject_type, subject_id, actor,"
                " details, prev_hash, hash) VALUES (7, :at, :a, :t, :i, :w, :d, :p, :h)"
            ),
            dict(zip("atiwd", fields, strict=True), at=at, p=prev, h=digest),
        )

    _tamper(engine, append)
    status, out = verify_cli(db_url, tmp_path, capsys)
    assert status == 1 and "BROKEN at seq 7" in out and "past the head" in out


def test_a_row_deleted_from_the_middle_is_found(
    engine: Engine,
    factory: SessionFactory,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _write_chain(factory)
    _tamper(engine, lambda c: c.execute(text("DELETE FROM audit_log WHERE seq = 3")))
    status, out = verify_cli(db_url, tmp_path, capsys)
    assert status == 1 and "BROKEN at seq 4" in out and "deleted" in out


def test_rows_cut_from_the_tail_are_found(
    engine: Engine,
    factory: SessionFactory,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _write_chain(factory)
    _tamper(engine, lambda c: c.execute(text("DELETE FROM audit_log WHERE seq >= 5")))
    status, out = verify_cli(db_url, tmp_path, capsys)
    assert status == 1
    assert "BROKEN at seq 5" in out and "ends at seq 4 but its head is seq 6" in out


def test_a_session_reused_after_others_appended_reads_the_new_head(
    factory: SessionFactory,
) -> None:
    """Sessions keep loaded rows after commit (expire_on_commit=False): a session that loaded
    the head before must not append after a stale one."""
    with factory() as first, factory() as second:
        held = []  # loaded in a transaction of their own, and kept alive
        for db in (first, second):
            with db.begin():
                held.append(db.get(AuditHead, 1))
        for db in (first, second, first, second):
            with db.begin():
                audit.record(db, "viewed", "session", "s", "t")
        assert len(held) == 2
    with factory() as db:
        report = audit.verify(db)
    assert report.ok and report.rows == 4, report


def _plain_sha256(seq: int, at: object, fields: tuple[str, ...], prev: str) -> str:
    """A row's hash as it was before the key: SHA-256 of the same canonical fields."""
    names = ("action", "subject_type", "subject_id", "actor", "details")
    row = {"seq": seq, "at": at.isoformat(), **dict(zip(names, fields, strict=True))}  # type: ignore[attr-defined]
    return hashlib.sha256(audit.canonical_json({**row, "prev_hash": prev}).encode()).hexdigest()


@pytest.mark.parametrize("forger", ["plain sha256", "another key"])
def test_a_row_forged_without_the_key_is_found_with_the_head_moved_to_it(
    engine: Engine,
    factory: SessionFactory,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    forger: str,
) -> None:
    """The review's forgery: with only the database's password, and no trigger dropped, append
    a plausible ``verdict_changed`` row chained onto the head and move the head forward to it
    (which the head's trigger allows)."""
    _write_chain(factory)
    other = audit.AuditKey(os.urandom(32))
    with engine.begin() as conn:
        prev, at = _hash_of(conn, 6), _at(conn, 6)
        det = audit.canonical_json({"from": "pending", "to": "approved"})
        fields = ("verdict_changed", "session", "S1", "system:verdicts", det)
        if forger == "plain sha256":
            digest = _plain_sha256(7, at, fields, prev)
        else:
            digest = audit.entry_hash(other, 7, at, *fields, prev)  # type: ignore[arg-type]
        conn.execute(
            text(
                "INSERT INTO audit_log (seq, at, action, subject_type, subject_id, actor,"
                " details, prev_hash, hash) VALUES (7, :at, :a, :t, :i, :w, :d, :p, :h)"
            ),
            dict(zip("atiwd", fields, strict=True), at=at, p=prev, h=digest),
        )
        conn.execute(text("UPDATE audit_head SET seq = 7, hash = :h"), {"h": digest})
    status, out = verify_cli(db_url, tmp_path, capsys)
    assert status == 1, out
    assert "BROKEN at seq 7" in out and "forged without the key" in out and "6 rows fine" in out


def test_verify_with_another_key_fails_at_the_first_row(
    factory: SessionFactory, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_chain(factory)
    wrong = tmp_path / "elsewhere" / "audit.key"
    audit.load_key(wrong)
    argv = ["--data-dir", str(tmp_path), "--database-url", db_url, "audit", "verify"]
    assert cli.main([*argv, "--key-file", str(wrong)]) == 1
    out = capsys.readouterr().out
    assert "BROKEN at seq 1" in out and "another key" in out, out
    # The right key, named explicitly, passes; the key is named by its id, never printed.
    assert cli.main([*argv, "--key-file", str(tmp_path / "audit.key")]) == 0
    out = capsys.readouterr().out
    key = audit.load_key(tmp_path / "audit.key")
    assert f"(key {key.key_id})" in out and key.secret.hex() not in out


def test_verify_without_the_key_file_says_so_and_makes_none(
    engine: Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = verify_cli(db_url, tmp_path, capsys)
    assert status == 2 and "no audit key" in out, out
    assert not (tmp_path / "audit.key").exists()


def test_the_key_file_is_made_once_private_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit.key"
    keys: list[audit.AuditKey] = []
    threads = [threading.Thread(target=lambda: keys.append(audit.load_key(path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Processes starting at once agree on one key; it is 32 bytes, owner-only, and hidden.
    assert len({k.secret for k in keys}) == 1 and len(keys) == 8
    assert keys[0].secret == path.read_bytes() and len(path.read_bytes()) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys[0].secret.hex() not in repr(keys[0])
    assert [p.name for p in path.parent.iterdir()] == ["audit.key"]
    short = tmp_path / "short.key"
    short.write_bytes(b"too short")
    with pytest.raises(audit.AuditKeyError, match="9 bytes"):
        audit.load_key(short)


def test_the_views_of_a_list_are_one_row(factory: SessionFactory) -> None:
    ids = [f"s{n}" for n in range(500)]
    audit.record_list_view(factory, "supervisor:x", "GET /sessions", {"limit": 500}, ids)
    with factory() as db:
        [row] = db.scalars(select(AuditEntry)).all()
        assert audit.verify(db).ok
    details = json.loads(row.details)
    assert (row.action, row.subject_type, details["shown"]) == ("viewed", "sessions", 500)
    assert details["ids"] == ids[: audit.MAX_VIEWED_IDS] and details["query"] == {"limit": 500}
    assert details["ids_sha256"] == hashlib.sha256("\n".join(ids).encode()).hexdigest()


def test_a_hash_replaced_by_any_text_is_reported_not_raised(
    engine: Engine,
    factory: SessionFactory,
    db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _write_chain(factory)
    _tamper(engine, lambda c: c.execute(text("UPDATE audit_log SET hash = 'é' WHERE seq = 6")))
    status, out = verify_cli(db_url, tmp_path, capsys)
    assert status == 1 and "BROKEN at seq 6" in out, out
