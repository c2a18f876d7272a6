"""Duplicate, reorder and corrupt chunks and events on their way to the server (the device's
real uploader over ``simulators.faults.MessageFaultLink``): every clip is stored once, with the
agent's hash; every event is applied once, none lost, none made up from a torn copy."""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import uuid
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fault_checks import integrity_problems, wait_until
from fault_ledger import LEDGER
from fault_stack import MESSAGE_DEVICE, FaultStack

from common.clock import to_utc
from common.commands import CommandType
from common.schemas import Event, EventType
from common.signing import load_private_key
from edge_agent.clips import ClipRequest, cut_and_enqueue, upload_id_for
from edge_agent.config import load_config
from edge_agent.outbox import Outbox
from edge_agent.spool import Spool
from edge_agent.uplink import Uploader
from simulators.faults import MessageFaultLink

pytestmark = pytest.mark.faults

SEED = 7_100
CLIPS = 16
EVENTS = 60


@pytest.mark.timeout(120)
def test_duplicated_reordered_corrupted_chunks_and_events(stack: FaultStack) -> None:
    device = stack.devices[MESSAGE_DEVICE]
    config = load_config(device.config_path)
    # Footage on a virtual clock (as fast as the encoder goes), cut into clips in process.
    out = device.cli("record", "--seconds", str(3 * CLIPS + 2), "--virtual-clock").stdout.split()
    began = to_utc(datetime.fromisoformat(out[0]))
    spool = Spool(config.spool_dir, read_only=True)
    outbox = Outbox(config.outbox_dir)
    key = load_private_key(config.keys.private_key_file)
    cmd_ids = [f"cut-msg-{i}" for i in range(CLIPS)]
    shas: dict[str, str] = {}
    for i, cmd_id in enumerate(cmd_ids):
        start = began + timedelta(seconds=1 + 3 * i)
        request = ClipRequest(start=start, end=start + timedelta(seconds=2), cmd_id=cmd_id)
        item = cut_and_enqueue(
            spool,
            outbox,
            key,
            request,
            device_id=device.device_id,
            chunk_size=config.upload.chunk_size,
            clock=outbox.clock,
            upload_id=upload_id_for(device.device_id, cmd_id),
        )
        shas[item.upload_id] = item.sha256
    spool.close()

    rng = random.Random(SEED)
    link = MessageFaultLink(
        config, config.broker_password(), rng=rng, duplicate=0.2, reorder=0.2, corrupt=0.12
    )
    upload_config = config.upload.model_copy(update={"rate_limit_bytes_per_s": 0})
    uploader = Uploader(link, outbox, upload_config)
    link.start()
    events = [
        Event(
            event_id=f"{device.device_id}-{i}-{uuid.uuid4().hex[:8]}",
            device_id=device.device_id,
            type=EventType.CONFIG_APPLIED,
            at=datetime.now().astimezone(),
            cmd_id=f"{CommandType.CONFIG.value[:4]}-msg-{i}",
            data={"n": i},
        )
        for i in range(EVENTS)
    ]
    try:
        assert link.wait_connected(10)
        # All at once, then waited for: a held event goes out after the next one.
        topic = f"classcam/v1/up/{device.device_id}/event"
        infos = [link.publish(topic, e.to_bytes()) for e in events]
        link.release_held()
        for info in infos:
            info.wait_for_publish(10)
        # Each pass gives every due clip one bounded attempt; a stale answer (to a duplicated
        # or reordered fin) is waited past, so no clip is charged for the network's tricks.
        stop = threading.Event()
        wait_until(lambda: uploader.drain(stop) >= 0 and outbox.count() == 0, 60, "uploads")
        assert uploader.stats.rejected == 0
        assert uploader.stats.failed_attempts == 0, "a stale answer cost a clip an attempt"
    finally:
        link.stop()
        outbox.close()
    faults = [LEDGER.inject(kind, SEED, topic) for kind, topic in link.injected]

    db_path = stack.server.db_url.removeprefix("sqlite:///")
    ids = [e.event_id for e in events]

    def stored_events() -> Counter[str]:
        with stack.db() as db:
            rows = db.execute(
                "SELECT event_id FROM device_events WHERE device_id = ?", (device.device_id,)
            )
            return Counter(r[0] for r in rows)

    with contextlib.suppress(AssertionError):  # what never comes is counted as lost below
        wait_until(lambda: set(ids) <= set(stored_events()), 20, "every event stored")
    stored = stored_events()
    problems = [f"event {e} lost" for e in ids if e not in stored]
    for event_id in ids:
        n = stored.get(event_id, 0)
        LEDGER.checked_event(event_id, "ok" if n == 1 else ("lost" if n == 0 else "duplicated"))
    problems += [f"event {e} stored {n} times" for e, n in stored.items() if n != 1]
    problems += [f"event {e} not from the device" for e in stored if e not in ids]
    with stack.db() as db:
        for upload_id, sha in shas.items():
            before = len(problems)
            rows = db.execute(
                "SELECT sha256, path FROM clips WHERE device_id = ? AND upload_id = ?",
                (device.device_id, upload_id),
            ).fetchall()
            if len(rows) != 1 or rows[0][0] != sha:
                problems.append(f"upload {upload_id}: {rows} (agent sha {sha})")
            elif not (stack.server.evidence_dir / rows[0][1]).exists():
                problems.append(f"upload {upload_id}: evidence file missing")
            else:
                data = (stack.server.evidence_dir / rows[0][1]).read_bytes()
                if hashlib.sha256(data).hexdigest() != sha:
                    problems.append(f"upload {upload_id}: evidence file does not hash to {sha}")
            LEDGER.checked_window(f"{device.device_id}/{upload_id}", len(problems) == before)
    problems += integrity_problems([Path(db_path), config.outbox_dir / "outbox.sqlite3"])
    assert not problems, f"seed {SEED}:\n" + "\n".join(problems)
    kinds = Counter(kind for kind, _ in link.injected)
    assert {"duplicate_chunk", "reorder_chunk", "corrupt_chunk"} <= set(kinds), kinds
    assert {"duplicate_event", "reorder_event", "corrupt_event"} <= set(kinds), kinds
    LEDGER.survived(faults)
