"""The feed for machines (issue 10, item 3): long-poll on a real uvicorn server over a real
SQLite database, the documented consumer (examples/feed_consumer.py) killed at random points
while a writer adds 10,000 events, and the kinds of change that become events.

Must show: a feed consumer restarted at random points while a writer adds 10,000 events ends
with exactly the 10,000, in order."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ingest_helpers import Harness, make_upload, one_room_school, wait_for
from sqlalchemy import select

from common.clock import VirtualClock
from common.signing import generate_private_key, public_key_b64
from ingest_server import feed
from ingest_server.api import create_app
from ingest_server.api.deps import ApiContext
from ingest_server.auth import Role, create_token
from ingest_server.db import SessionFactory, make_engine, make_session_factory
from ingest_server.models import FeedEvent
from ingest_server.sessions import append_feed
from ingest_server.settings import Settings
from ingest_server.setup_import import import_rows, read_rows
from ingest_server.store import EvidenceStore
from simulators.broker import free_port
from simulators.phone import make_photo

ROOT = Path(__file__).resolve().parents[2]
CONSUMER = ROOT / "examples" / "feed_consumer.py"
T0 = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=4)
LECTURER_TOKEN = "lecturer-app-token-0123456789"
EVENTS = 10_000
SEED = 20261129


def _setup_doc() -> dict[str, Any]:
    key = public_key_b64(generate_private_key())
    return one_room_school("cam-1", key, LECTURER_TOKEN, {"s-1": T0 + timedelta(hours=1)})


@dataclass
class Server:
    """The API on a real uvicorn server in this process (so its commits wake its waiters)."""

    url: str
    factory: SessionFactory
    tokens: dict[str, str]
    database_url: str

    def client(self, who: str = "admin", timeout: float = 40.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def append(self, count: int = 1, first: int = 0) -> None:
        """``count`` events in one transaction, through the production append path."""
        with self.factory.begin() as db:
            for i in range(first, first + count):
                append_feed(db, "test", None, {"i": i})

    def last_seq(self) -> int:
        with self.factory() as db:
            return db.scalar(select(FeedEvent.seq).order_by(FeedEvent.seq.desc()).limit(1)) or 0


@pytest.fixture
def serve(tmp_path: Path, sqlite_url: str) -> Iterator[Callable[..., Server]]:
    """Start the API on the seeded database with some settings changed; stopped at the end."""
    stops: list[Callable[[], None]] = []
    engine = make_engine(sqlite_url)
    factory = make_session_factory(engine)
    doc = tmp_path / "setup.json"
    doc.write_text(json.dumps(_setup_doc()))
    tokens = {"lecturer": LECTURER_TOKEN}
    with factory.begin() as db:
        import_rows(db, read_rows(doc), Settings(data_dir=tmp_path, database_url=sqlite_url))
        for who, role, institution in (
            ("admin", Role.ADMIN, None),
            ("supervisor", Role.SUPERVISOR, None),
            ("institution", Role.INSTITUTION, "school"),
        ):
            _, tokens[who] = create_token(db, role, NOW, name=who, institution_id=institution)

    def start(**overrides: Any) -> Server:
        settings = Settings(data_dir=tmp_path, database_url=sqlite_url, **overrides)
        context = ApiContext(
            settings,
            factory,
            EvidenceStore(settings.evidence_dir),
            recompute=lambda ids: None,
            clock=VirtualClock(start=NOW),
        )
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(context), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_for(lambda: server.started or not thread.is_alive(), 10, "uvicorn to start")
        assert thread.is_alive(), "uvicorn did not start"

        def stop() -> None:
            server.should_exit = True
            thread.join(10)

        stops.append(stop)
        return Server(f"http://127.0.0.1:{port}", factory, tokens, sqlite_url)

    try:
        yield start
    finally:
        for stop in stops:
            stop()
        engine.dispose()


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _holds_or_ended(out: Path, count: int, consumer: subprocess.Popen[bytes]) -> bool:
    return _lines(out) >= count or consumer.poll() is not None


def test_a_consumer_killed_at_random_points_ends_with_every_event_once_in_order(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    server = serve()
    rng = random.Random(SEED)
    before = server.last_seq()  # the setup's own events are not the writer's
    cursor, out = tmp_path / "consumer" / "feed.cursor", tmp_path / "consumer" / "feed.jsonl"
    cursor.parent.mkdir()
    cursor.write_text(f"{before}\n")
    errors: list[BaseException] = []
    written = threading.Event()

    def writer() -> None:
        # Transactions of 1 to 60 events, with short pauses, so the writer runs across the
        # consumer's kills and restarts.
        try:
            pace = random.Random(SEED + 1)
            i = 0
            while i < EVENTS:
                n = min(pace.randint(1, 60), EVENTS - i)
                server.append(n, first=i)
                i += n
                threading.Event().wait(pace.uniform(0, 0.01))
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
        finally:
            written.set()

    env = dict(os.environ, CLASSCAM_TOKEN=server.tokens["supervisor"])
    command = [sys.executable, str(CONSUMER), "--url", server.url, "--cursor", str(cursor)]
    command += ["--out", str(out), "--wait", "5", "--limit", "200"]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, env=env, stderr=subprocess.PIPE)

    def kill(process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        assert process.returncode == -signal.SIGKILL, (
            process.stderr.read() if process.stderr else ""
        )

    thread = threading.Thread(target=writer)
    thread.start()
    consumer = start()
    kills = kills_while_writing = 0
    try:
        # Killed once its file holds at least each of these counts of events, at whatever it
        # is doing then (reading, writing its file, saving its cursor, waiting); now and then
        # killed again at once, before it has done anything.
        for point in sorted(rng.sample(range(1, EVENTS), 12)):
            wait_for(
                functools.partial(_holds_or_ended, out, point, consumer),
                30,
                f"the consumer to hold {point} events",
            )
            assert consumer.poll() is None, consumer.stderr.read() if consumer.stderr else ""
            kill(consumer)
            kills += 1
            kills_while_writing += not written.is_set()
            consumer = start()
            if rng.random() < 0.3:
                kill(consumer)
                kills += 1
                consumer = start()
        thread.join(60)
        assert not errors, errors
        assert written.is_set()
        last = server.last_seq()
        wait_for(
            lambda: cursor.read_text().strip() == str(last),
            30,
            "the consumer to save the last cursor",
            lambda: (_lines(out), cursor.read_text()),
        )
    finally:
        consumer.kill()
        consumer.wait(10)
        thread.join(60)

    events = [json.loads(line) for line in out.read_text().splitlines()]
    seqs = [e["seq"] for e in events]
    assert [e["payload"]["i"] for e in events] == list(range(EVENTS))
    assert seqs == sorted(set(seqs)) and seqs[-1] == last
    print(f"{kills} kills, {kills_while_writing} of them while the writer wrote")


def test_a_long_poll_answers_within_a_second_of_a_commit(serve: Callable[..., Server]) -> None:
    # Re-reads every 30 s only: within a second, only the commit's own signal can wake it.
    server = serve(feed_recheck_s=30)
    after = server.last_seq()
    answered: list[tuple[float, httpx.Response]] = []
    idle = feed.commits.listeners

    def poll() -> None:
        with server.client() as client:
            answer = client.get("/api/v1/feed", params={"after": after, "wait": 20})
            answered.append((time.monotonic(), answer))

    for round_ in range(3):
        thread = threading.Thread(target=poll)
        thread.start()
        wait_for(lambda: feed.commits.listeners == idle + 1, 10, "the long-poll to wait")
        server.append(first=round_)
        committed = time.monotonic()
        thread.join(20)
        at, answer = answered.pop()
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert [e["payload"]["i"] for e in page["events"]] == [round_]
        assert at - committed < 1.0, f"answered {at - committed:.3f} s after the commit"
        print(f"long-poll answered {1000 * (at - committed):.1f} ms after the commit")
        after = page["next"]
    assert feed.commits.listeners == idle


def test_a_commit_in_another_process_is_seen_by_the_recheck(
    serve: Callable[..., Server],
) -> None:
    server = serve()  # re-reads every second
    after = server.last_seq()
    script = (
        "import sys, time\n"
        "from ingest_server.db import make_engine, make_session_factory\n"
        "from ingest_server.sessions import append_feed\n"
        "factory = make_session_factory(make_engine(sys.argv[1]))\n"
        "with factory.begin() as db:\n"
        "    append_feed(db, 'test', None, {'i': 'elsewhere'})\n"
        "print(time.monotonic(), flush=True)\n"
    )
    with server.client() as client:
        started = time.monotonic()
        writer = subprocess.Popen(
            [sys.executable, "-c", script, server.database_url], stdout=subprocess.PIPE, cwd=ROOT
        )
        answer = client.get("/api/v1/feed", params={"after": after, "wait": 30})
        answered = time.monotonic()
        out, _ = writer.communicate(timeout=30)
    committed = float(out)
    assert writer.returncode == 0
    assert [e["payload"]["i"] for e in answer.json()["events"]] == ["elsewhere"]
    assert committed > started
    # Its commit woke nobody here: the next re-read (every second) found it.
    assert answered - committed < 1.5, f"seen {answered - committed:.3f} s after the commit"
    print(f"another process's commit seen {answered - committed:.3f} s after it")


def test_a_wait_with_nothing_new_ends_empty_with_the_same_cursor(
    serve: Callable[..., Server],
) -> None:
    server = serve(feed_recheck_s=0.2)
    server.append()
    after = server.last_seq()
    with server.client() as client:
        started = time.monotonic()
        answer = client.get("/api/v1/feed", params={"after": after, "wait": 1})
        took = time.monotonic() - started
        assert answer.status_code == 200
        assert answer.json() == {"events": [], "next": after}
        assert 1.0 <= took < 3.0, took
        # Events there already: no wait at all.
        started = time.monotonic()
        answer = client.get("/api/v1/feed", params={"after": 0, "wait": 30})
        assert answer.json()["events"] and time.monotonic() - started < 1.0


def test_wait_is_validated_documented_and_keeps_the_feeds_roles(
    serve: Callable[..., Server],
) -> None:
    server = serve()
    with server.client() as client:
        for wait in ("31", "-1", "1.5", "soon", str(10**30)):
            assert client.get("/api/v1/feed", params={"wait": wait}).status_code == 422, wait
        document = client.get("/api/openapi.json").json()
    operation = document["paths"]["/api/v1/feed"]["get"]
    wait_param = next(p for p in operation["parameters"] if p["name"] == "wait")
    assert wait_param["schema"]["maximum"] == 30 and wait_param["schema"]["minimum"] == 0
    assert "long-poll" in wait_param["description"]
    assert "503" in operation["responses"]
    # The roles of the feed are unchanged, and a refused caller is refused at once, not held.
    for who, status in (("admin", 200), ("supervisor", 200), ("institution", 403)):
        with server.client(who) as client:
            started = time.monotonic()
            answer = client.get("/api/v1/feed", params={"after": 10**9, "wait": 1})
            assert answer.status_code == status, who
            if status != 200:
                assert time.monotonic() - started < 1.0
    with httpx.Client(base_url=server.url) as anonymous:
        assert anonymous.get("/api/v1/feed", params={"wait": 5}).status_code == 401
    with server.client("lecturer") as client:
        assert client.get("/api/v1/feed", params={"wait": 5}).status_code == 403


def test_long_polls_past_the_cap_are_told_to_come_back(serve: Callable[..., Server]) -> None:
    server = serve(feed_max_waiters=1)
    after = server.last_seq()
    answered: list[httpx.Response] = []
    wait_for(lambda: feed.commits.listeners == 0, 10, "no waiter left")  # the cap counts them all

    def poll() -> None:
        with server.client() as client:
            answered.append(client.get("/api/v1/feed", params={"after": after, "wait": 20}))

    thread = threading.Thread(target=poll)
    thread.start()
    wait_for(lambda: feed.commits.listeners == 1, 10, "the first long-poll to wait")
    with server.client() as client:
        busy = client.get("/api/v1/feed", params={"after": after, "wait": 20})
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        # Without a wait nobody is held, so nobody is turned away.
        assert client.get("/api/v1/feed", params={"after": after}).status_code == 200
    server.append()
    thread.join(20)
    assert len(answered[0].json()["events"]) == 1
    wait_for(lambda: feed.commits.listeners == 0, 10, "the waiter to leave")


def test_a_hundred_long_polls_at_once_leave_the_pool_to_everyone(
    serve: Callable[..., Server],
) -> None:
    """More waiters than the pool has connections (5 + 10) and the API has threads (40): each
    request gives its connection back after reading its token, so none holds one while it
    waits for a thread, and the pool cannot be taken from the threads that would free it."""
    server = serve()
    after = server.last_seq()
    wait_for(lambda: feed.commits.listeners == 0, 10, "no waiter left")
    headers = {"Authorization": f"Bearer {server.tokens['admin']}"}

    async def herd() -> tuple[list[httpx.Response], httpx.Response, float]:
        limits = httpx.Limits(max_connections=120)
        async with httpx.AsyncClient(
            base_url=server.url, headers=headers, timeout=40, limits=limits
        ) as client:
            polls = [
                asyncio.create_task(client.get("/api/v1/feed", params={"after": after, "wait": 30}))
                for _ in range(100)
            ]
            while feed.commits.listeners < 100:
                await asyncio.sleep(0.05)
            asked = time.monotonic()
            other = await client.get("/api/v1/devices")
            other_s = time.monotonic() - asked
            await asyncio.to_thread(server.append)
            return await asyncio.gather(*polls), other, other_s

    answers, other, other_s = asyncio.run(asyncio.wait_for(herd(), 60))
    assert other.status_code == 200 and other_s < 10, other_s
    assert [a.status_code for a in answers] == [200] * 100
    assert all(len(a.json()["events"]) == 1 for a in answers)


def _feed_kinds(factory: SessionFactory) -> list[tuple[str, str | None, dict[str, Any]]]:
    with factory() as db:
        rows = db.scalars(select(FeedEvent).order_by(FeedEvent.seq))
        return [(r.kind, r.session_id, json.loads(r.payload)) for r in rows]


def test_a_stored_clip_is_an_event_once(harness: Harness, key: Ed25519PrivateKey) -> None:
    upload = make_upload(harness.store.root.parent / "up", key, "dev-1", "up-feed")
    harness.upload(upload)
    harness.flush()
    harness.upload(upload)  # sent again: stored once, one event
    harness.flush()
    clips = [e for e in _feed_kinds(harness.sessions) if e[0] == "clip_stored"]
    assert len(clips) == 1
    _, session_id, payload = clips[0]
    assert session_id == "sess-1"
    assert payload["upload_id"] == "up-feed" and payload["device_id"] == "dev-1"
    assert payload["sha256"] == upload.manifest.sha256 and payload["size"] == upload.manifest.size


def test_a_photo_is_an_event(serve: Callable[..., Server]) -> None:
    server = serve()
    photo = make_photo(
        size=(320, 240), scene_seed=7, taken_at=T0 + timedelta(hours=1), lat=31.2304, lon=121.4737
    )
    with server.client("lecturer") as client:
        answer = client.post(
            "/api/v1/sessions/s-1/photos/opening", files={"file": ("p.jpg", photo, "image/jpeg")}
        )
        assert answer.status_code == 201, answer.text
        # The same photo again (a retry whose answer was lost): no second event.
        again = client.post(
            "/api/v1/sessions/s-1/photos/opening", files={"file": ("p.jpg", photo, "image/jpeg")}
        )
        assert again.status_code == 201
    photos = [e for e in _feed_kinds(server.factory) if e[0] == "photo_received"]
    assert len(photos) == 1
    _, session_id, payload = photos[0]
    assert session_id == "s-1"
    assert payload["id"] == answer.json()["id"] and payload["kind"] == "opening"
    assert payload["sha256"] == answer.json()["sha256"]


def test_a_consumer_whose_output_was_lost_reads_it_again_rather_than_skip_it(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    """The cursor says 30 events were handled, but the output (restored from an older backup)
    holds only the first 10: the consumer trusts the output and fills in the other 20."""
    server = serve()
    before = server.last_seq()
    server.append(30)
    cursor, out = tmp_path / "feed.cursor", tmp_path / "feed.jsonl"
    cursor.write_text(f"{before + 30}\n")
    with server.client("supervisor") as client:
        first = client.get("/api/v1/feed", params={"after": before, "limit": 10}).json()
    out.write_bytes(b"".join(json.dumps(e).encode() + b"\n" for e in first["events"]))
    env = dict(os.environ, CLASSCAM_TOKEN=server.tokens["supervisor"])
    command = [sys.executable, str(CONSUMER), "--url", server.url, "--cursor", str(cursor)]
    consumer = subprocess.Popen([*command, "--out", str(out), "--wait", "1"], env=env)
    try:
        wait_for(lambda: _holds_or_ended(out, 30, consumer), 20, "the lost events")
    finally:
        consumer.kill()
        consumer.wait(10)
    seqs = [json.loads(line)["seq"] for line in out.read_bytes().splitlines()]
    assert seqs == list(range(before + 1, before + 31))
