"""A server upgraded from 0002 with clips already stored: they go on proving their windows."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from ingest_server.db import make_engine, make_session_factory, migrate
from ingest_server.facts import FactReader
from ingest_server.models import ClassSession, Clip, ClipCheck
from ingest_server.rules.verdict import judge
from ingest_server.settings import Settings

START = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)


def _iso(d: datetime) -> str:
    return d.strftime("%Y-%m-%d %H:%M:%S.%f")


def _old_server_with_clips(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate(url, "0002")
    con = sqlite3.connect(tmp_path / "old.db")
    now = _iso(START + timedelta(hours=2))
    con.execute("insert into institutions (id, name) values ('school', 's')")
    con.execute(
        "insert into classrooms (id, institution_id, name, lat, lon, datum, radius_m)"
        " values ('room-0', 'school', 'r', 31.23, 121.47, 'wgs84', 100)"
    )
    con.execute(
        "insert into devices (device_id, public_key, classroom_id, created_at, enabled)"
        " values ('cam-0', 'k', 'room-0', ?, 1)",
        (now,),
    )
    cols = [r[1] for r in con.execute("pragma table_info(lecturers)")]
    con.execute(
        f"insert into lecturers ({','.join(cols)}) values ({','.join('?' * len(cols))})",
        [{"id": "lect-0", "institution_id": "school"}.get(c, "x" * 64) for c in cols],
    )
    con.execute(
        "insert into training_classes (id, institution_id, name) values ('cls', 'school', 'c')"
    )
    con.execute(
        "insert into class_sessions (id, class_id, classroom_id, lecturer_id,"
        " scheduled_start, duration_s, state, opened_at, closed_at, recorded_s, verdict,"
        " verdict_reasons) values ('s0','cls','room-0','lect-0',?,5400,'closed',?,?,5400,"
        " 'pending', '[]')",
        (_iso(START), _iso(START), _iso(START + timedelta(minutes=90))),
    )
    for idx in range(3):
        ws = START + timedelta(minutes=10 + 25 * idx)
        we = ws + timedelta(seconds=60)
        cmd = f"cut-s0-{idx}"
        up = f"up-{idx}"
        con.execute(
            "insert into session_windows (session_id, idx, start, end, cmd_id,"
            " requested_at, request_count, upload_id) values ('s0',?,?,?,?,?,1,?)",
            (idx, _iso(ws), _iso(we), cmd, now, up),
        )
        manifest = {
            "upload_id": up,
            "device_id": "cam-0",
            "session_id": "s0",
            "cmd_id": cmd,
            "cut_start": ws.isoformat(),
            "cut_end": we.isoformat(),
            "clock_offset_s": 0.0,
        }
        con.execute(
            "insert into uploads values (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                up,
                "cam-0",
                json.dumps(manifest),
                1,
                f"{idx:064x}",
                1,
                "complete",
                None,
                "[]",
                1,
                0,
                now,
                now,
            ),
        )
        cur = con.execute(
            "insert into clips (upload_id, device_id, session_id, kind, sha256,"
            " size, path, cut_start, cut_end, duration_s, frames, width, height,"
            " codec, stored_at) values (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                up,
                "cam-0",
                "s0",
                "clip",
                f"{idx:064x}",
                1,
                f"c/{up}.mp4",
                _iso(ws),
                _iso(we),
                60.0,
                900,
                1280,
                720,
                "h264",
                now,
            ),
        )
        con.execute(
            "insert into clip_checks (clip_id, black, frozen, mean_luma,"
            " frozen_fraction, checked_at) values (?,0,0,100,0,?)",
            (cur.lastrowid, now),
        )
    con.commit()
    con.close()

    return url


def test_clips_stored_before_the_upgrade_keep_their_command_and_are_checked_again(tmp_path):
    """Clips stored before 0003 take their command and offset from the signed manifest they
    arrived under, and their checks (which kept no decoded facts) are queued again; until the
    checker has run, their windows are awaited, never failed."""
    url = _old_server_with_clips(tmp_path)
    migrate(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    with factory() as db:
        clips = db.scalars(select(Clip).order_by(Clip.id)).all()
        checks = db.scalars(select(ClipCheck)).all()
        row = db.get(ClassSession, "s0")
        evidence = FactReader(Settings(data_dir=tmp_path, database_url=url)).evidence(db, row)
    engine.dispose()
    assert [c.cmd_id for c in clips] == ["cut-s0-0", "cut-s0-1", "cut-s0-2"]
    assert [c.clock_offset_s for c in clips] == [0.0, 0.0, 0.0]
    assert checks and all(c.checked_at is None and c.attempts == 0 for c in checks)
    assert [len(w.clips) for w in evidence.windows] == [1, 1, 1]
    codes = {r.code.value for r in judge(evidence, START + timedelta(hours=3)).reasons}
    assert "clip_unreadable" not in codes and "clip_missing" not in codes
    assert "clip_awaited" in codes
