"""Every MQTT handler fuzzed (issue 8, item 9): the real ingest processor, with the real
status/heartbeat/event handler behind it, on a real SQLite file and store, takes messages on
every topic kind (and on topics that are none) with empty, garbage, huge, deeply nested,
non-UTF-8 and wrongly typed payloads, and manifests signed by another device. It never raises;
every message that cannot be valid is counted as a refusal; and what was accepted before the
fuzz (a complete clip) is unchanged after it, while an upload under way still completes with
the device's bytes once the real chunks arrive."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fuzz_budget import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from ingest_helpers import START, Harness, TestUpload, make_upload
from sqlalchemy import select, text

from common import topics
from common.heartbeat import Heartbeat
from common.schemas import AckState, Event, EventType, Status, StatusState
from common.signing import generate_private_key, sign_manifest
from ingest_server.device_messages import DeviceMessages
from ingest_server.ingest import IngestProcessor
from ingest_server.models import Clip, Upload

DEVICE, OTHER = "dev-1", "dev-2"
DEVICES = [DEVICE, OTHER, "nobody"]
UPLOADS = ["up-good", "up-open", "up-new", "x" * 64]

# Payloads that no handler may accept, whatever the topic.
HOSTILE = [
    b"\xff\xfe\xfd\x00",
    b"[" * 100_000,
    b'{"a":' * 50_000,
    b"0" * (2 * 1024 * 1024),
    b"null",
    b"[]",
    b'"text"',
    b"1e999",
    b"NaN",
    b"{",
    '{"device_id": "dev-1", "state": "online"}\udcff'.encode("utf-8", "surrogatepass"),
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@dataclass
class World:
    harness: Harness
    fleet: DeviceMessages
    key: Ed25519PrivateKey
    other_key: Ed25519PrivateKey
    good: TestUpload
    open: TestUpload
    clip_file: Path
    before: dict[str, Any]

    def refusals(self) -> int:
        fleet = sum(
            n for k, n in self.fleet.counters.items() if k.startswith("bad_") or "mismatch" in k
        )
        return sum(self.harness.processor.counters.values()) + fleet


def snapshot(world_harness: Harness, clip_file: Path) -> dict[str, Any]:
    """What was accepted: the clip's bytes and its database rows."""
    with world_harness.sessions() as db:
        clips = [
            (c.upload_id, c.device_id, c.sha256, c.size, c.path, c.cmd_id, c.cut_start)
            for c in db.scalars(select(Clip).where(Clip.upload_id == "up-good"))
        ]
        upload = db.get(Upload, ("up-good", DEVICE))
        assert upload is not None
        row = (upload.state, upload.sha256, upload.size, upload.manifest, upload.reject_reason)
    return {
        "file": hashlib.sha256(clip_file.read_bytes()).hexdigest(),
        "clips": clips,
        "upload": row,
    }


@pytest.fixture
def world(sqlite_url: str, tmp_path: Path) -> Iterator[World]:
    key, other_key = generate_private_key(), generate_private_key()
    harness = Harness(sqlite_url, tmp_path / "evidence")
    harness.register(DEVICE, key)
    harness.register(OTHER, other_key)
    fleet = DeviceMessages(harness.sessions, 90.0, harness.clock)
    harness.processor = IngestProcessor(
        harness.sessions,
        harness.store,
        harness.settings,
        harness.clock,
        device_messages=fleet.handle,
    )
    good = make_upload(
        tmp_path / "device", key, DEVICE, "up-good", size=3 * 1024 + 5, chunk_size=1024
    )
    acks = harness.upload(good)
    assert acks[-1].state is AckState.COMPLETE
    still_open = make_upload(tmp_path / "device", key, DEVICE, "up-open", size=2048, chunk_size=512)
    harness.send(still_open.init_topic(), still_open.init_payload)
    harness.send_chunks(still_open, [0])
    harness.flush()
    clip_file = next((harness.store.root / "clips").rglob("up-good.mp4"))
    world = World(harness, fleet, key, other_key, good, still_open, clip_file, {})
    world.before = snapshot(harness, clip_file)
    try:
        yield world
    finally:
        harness.close()


def forged_manifest(world: World, claim: str, upload_id: str, signer: str) -> bytes:
    """A manifest for ``upload_id`` claiming device ``claim``, signed with ``signer``'s key:
    never dev-1's own key, so nothing of dev-1's can be forged."""
    manifest = world.good.manifest.model_copy(
        update={"upload_id": upload_id, "device_id": claim, "session_id": "sess-x"}
    )
    return sign_manifest(manifest, world.other_key if signer == OTHER else generate_private_key())


def valid_payload(kind: str, device: str, upload_id: str) -> dict[str, Any]:
    """A payload of the right shape for ``kind`` (a starting point for mutations)."""
    at = START.isoformat()
    if kind == "status":
        return Status(device_id=device, state=StatusState.ONLINE).model_dump(mode="json")
    if kind == "event":
        return Event(
            event_id="ev-fuzz", device_id=device, type=EventType.ERROR, at=START
        ).model_dump(mode="json")
    if kind == "heartbeat":
        # Every required field with a plain valid value: new fields need no edit here.
        plain: dict[Any, Any] = {int: 1, float: 1.0, str: "x", bool: False}
        return {
            name: device if name == "device_id" else plain.get(field.annotation, at)
            for name, field in Heartbeat.model_fields.items()
            if field.is_required()
        }
    return {"upload_id": upload_id, "size": 3 * 1024 + 5, "sha256": "0" * 64}  # fin


@st.composite
def messages(draw: st.DrawFn, world: World) -> tuple[str, bytes, bool]:
    """(topic, payload, surely_bad): ``surely_bad`` when no handler may accept it."""
    device = draw(st.sampled_from(DEVICES))
    upload_id = draw(st.sampled_from(UPLOADS))
    kind = draw(st.sampled_from(["status", "heartbeat", "event", "init", "chunk", "fin", "bad"]))
    if kind == "bad":
        topic = draw(
            st.one_of(
                st.text(max_size=40).map(lambda t: "x/" + t),
                st.sampled_from(
                    [
                        "",
                        "classcam/v1/up",
                        f"classcam/v1/up/{device}",
                        f"classcam/v1/up/{device}/nonsense",
                        "classcam/v1/up//status",
                        "classcam/v1/up/dev 1/status",
                        "classcam/v1/up/+/status",
                        "classcam/v1/up/#",
                        f"classcam/v1/up/{device}/file/{upload_id}/init/extra",
                        f"classcam/v1/up/{device}/file/bad id/fin",
                        f"classcam/v1/up/{'d' * 65}/heartbeat",
                        "classcam/v1/down/dev-1/cmd",
                    ]
                ),
            )
        )
        return topic, draw(st.binary(max_size=64)), True
    if kind == "chunk":
        offset = draw(
            st.one_of(
                st.sampled_from(["0", "512", "1024", "-1", "abc", "1.5", "99999999999999999999"]),
                st.integers(-(2**70), 2**70).map(str),
            )
        )
        topic = f"{topics.UP}/{device}/file/{upload_id}/chunk/{offset}"
        payload = draw(st.one_of(st.binary(max_size=1100), st.sampled_from(HOSTILE)))
        # A late chunk of a finished upload is let through unread (counted in stats).
        late = device == DEVICE and upload_id == "up-good" and offset.isdigit()
        return topic, payload, not late
    topic = {
        "status": topics.status(device),
        "heartbeat": topics.heartbeat(device),
        "event": topics.event(device),
        "init": topics.file_init(device, upload_id),
        "fin": topics.file_fin(device, upload_id),
    }[kind]
    if kind == "init":
        forged = draw(st.booleans())
        if forged:
            claim = draw(st.sampled_from([DEVICE, OTHER]))
            signer = draw(st.sampled_from([OTHER, "stranger"]))
            payload = forged_manifest(world, claim, upload_id, signer)
            # dev-2's own manifest on dev-2's topic is the one honest init here.
            honest = device == OTHER and claim == OTHER and signer == OTHER
            return topic, payload, not honest
    how = draw(
        st.sampled_from(["hostile", "binary", "extra_key", "wrong_type", "json", "other_device"])
    )
    if how == "hostile":
        return topic, draw(st.sampled_from(HOSTILE)), True
    if how == "binary":
        payload = draw(st.binary(max_size=256))
        # An empty status clears a retained message: valid.
        return topic, payload, not (kind == "status" and payload == b"")
    if how == "other_device" and kind in ("status", "heartbeat", "event"):
        # A valid payload naming another device than its topic (the broker login's) does.
        claimed = draw(st.sampled_from([d for d in DEVICES if d != device]))
        return topic, json.dumps(valid_payload(kind, claimed, upload_id)).encode(), True
    base = valid_payload(kind, device, upload_id)
    if how == "extra_key":
        # Every payload model forbids unknown fields.
        base[draw(st.sampled_from(["zz", "signature2", "__proto__"]))] = draw(json_values)
        return topic, json.dumps(base).encode(), True
    if how == "wrong_type":
        base[draw(st.sampled_from(sorted(base)))] = draw(json_values)
        return topic, json.dumps(base, allow_nan=True).encode(), False
    return topic, json.dumps(draw(json_values), allow_nan=True).encode(), True


def assert_accepted_data_unchanged(world: World) -> None:
    assert snapshot(world.harness, world.clip_file) == world.before
    with world.harness.sessions() as db:
        if db.get_bind().dialect.name == "sqlite":  # the file is whole (PostgreSQL has no pragma)
            assert db.execute(text("PRAGMA integrity_check")).scalar() == "ok"


@settings(max_examples=examples(150))
@given(data=st.data())
def test_no_handler_raises_every_bad_message_is_counted_nothing_accepted_changes(
    world: World, data: st.DataObject
) -> None:
    batch = data.draw(st.lists(messages(world), min_size=1, max_size=4), label="messages")
    for topic, payload, surely_bad in batch:
        before = world.refusals()
        world.harness.processor.handle(topic, payload)
        world.harness.processor.flush()
        if surely_bad:
            assert world.refusals() > before, (topic, payload[:80])
    assert_accepted_data_unchanged(world)


def test_after_the_fuzz_an_upload_under_way_completes_with_the_devices_bytes(
    world: World,
) -> None:
    """Run the fuzz, then send the rest of the upload that was under way: it completes, and its
    file is exactly the device's (no fuzzed chunk got into its staging file)."""
    test_no_handler_raises_every_bad_message_is_counted_nothing_accepted_changes(world)
    harness = world.harness
    acks = harness.send_chunks(world.open)
    acks += harness.send(world.open.fin_topic(), world.open.fin_payload())
    assert acks[-1].state is AckState.COMPLETE, acks
    stored = next((harness.store.root / "clips").rglob("up-open.mp4"))
    assert stored.read_bytes() == world.open.data
    assert_accepted_data_unchanged(world)
    with harness.sessions() as db:
        clips = {(c.device_id, c.upload_id) for c in db.scalars(select(Clip))}
    assert clips == {(DEVICE, "up-good"), (DEVICE, "up-open")}, "no clip from a forged manifest"


def test_valid_messages_are_not_counted_as_refusals(world: World) -> None:
    """Sanity of the harness: a valid event and heartbeat are taken (so 'counted' above means
    refused, not merely seen)."""
    event = Event(event_id="e-1", device_id=DEVICE, type=EventType.ERROR, at=START)
    world.harness.processor.handle(topics.event(DEVICE), event.to_bytes())
    beat = valid_payload("heartbeat", DEVICE, "")
    beat["at"] = (START + timedelta(seconds=1)).isoformat()
    world.harness.processor.handle(topics.heartbeat(DEVICE), json.dumps(beat).encode())
    assert world.fleet.counters["events"] == 1 and world.fleet.counters["heartbeats"] == 1
    assert world.refusals() == 0
