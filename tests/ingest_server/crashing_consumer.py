"""A consumer process that dies before it commits: run by test_consumer_durability.

It handles what the broker hands it, prints ``flushing`` when the first group commit begins,
then hangs there until the test SIGKILLs it, so whatever it received was never made durable.
Settings come from the ``CLASSCAM_*`` environment, as for the real server.
"""

from __future__ import annotations

import sys
import threading

from common.clock import SystemClock
from ingest_server.consumer import ConsumerThread
from ingest_server.db import make_engine, make_session_factory
from ingest_server.ingest import IngestProcessor, Outgoing
from ingest_server.settings import Settings
from ingest_server.store import EvidenceStore


class DiesBeforeCommit(IngestProcessor):
    def handle(self, topic: str, payload: bytes) -> list[Outgoing]:
        out = super().handle(topic, payload)
        print(f"handled {topic}", flush=True)
        return out

    def flush(self) -> list[Outgoing]:
        print("flushing", flush=True)
        threading.Event().wait()  # until SIGKILL
        return []


def main() -> None:
    settings = Settings()
    engine = make_engine(settings.database_url)
    processor = DiesBeforeCommit(
        make_session_factory(engine), EvidenceStore(settings.evidence_dir), settings, SystemClock()
    )
    ConsumerThread(settings, processor).start()
    print("subscribed", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())
