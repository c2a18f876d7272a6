"""A consumer of classcam's event feed that survives being killed at any moment.

It long-polls ``GET /api/v1/feed?after=CURSOR&wait=SECONDS``, hands each page to a handler, and
only then saves the page's ``next`` as its cursor, durably (a temporary file, fsync, rename,
fsync of the folder). Restarted, it asks again from the saved cursor: nothing is skipped.

A kill after the handler ran but before the cursor was saved hands that page over again, so
the handler must be idempotent by ``seq``. The handler here, ``JsonlSink``, appends each event
as a line to a file and skips events at or below the last ``seq`` it holds: its file ends with
every event exactly once, in feed order. Put your own processing in its place
(docs/feed-consumer.md).

Run it with a supervisor's or an admin's API token (``classcam-server token create``)::

    CLASSCAM_TOKEN=cc_... python examples/feed_consumer.py --url http://127.0.0.1:8000 \\
        --cursor var/feed.cursor --out var/feed.jsonl

It needs only the Python standard library and ``httpx``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

Event = dict[str, Any]


class CursorFile:
    """The cursor (the ``seq`` of the last event handled), kept durably in one small file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int:
        """The saved cursor; 0 (the feed's start) when none was saved yet."""
        try:
            return int(self.path.read_text(encoding="ascii").strip())
        except FileNotFoundError:
            return 0

    def save(self, cursor: int) -> None:
        """Replace the saved cursor in one step: a crash leaves the old one or the new one,
        never a torn file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "w", encoding="ascii") as f:
            f.write(f"{cursor}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)
        _fsync_folder(self.path.parent)


def _fsync_folder(folder: Path) -> None:
    # The rename is durable once the folder's entry is (POSIX; Windows has no folder fsync).
    if os.name == "posix":
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class JsonlSink:
    """The example's processing: every event as one JSON line, appended and fsynced.

    Idempotent by ``seq``: opening the file drops a line torn by a crash mid-write and
    remembers the last ``seq`` written; events at or below it are not written again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_seq = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        with open(path, "ab+") as f:
            f.seek(0)
            data = f.read()
            whole = data.rfind(b"\n") + 1
            if whole < len(data):
                f.truncate(whole)  # a line cut short by a crash: it is written again
                f.flush()
                os.fsync(f.fileno())
            lines = data[:whole].splitlines()
            if lines:
                self.last_seq = int(json.loads(lines[-1])["seq"])
        if not existed:
            _fsync_folder(path.parent)  # a power cut must not lose the file behind the cursor

    def __call__(self, events: list[Event]) -> None:
        fresh = [e for e in events if e["seq"] > self.last_seq]
        if not fresh:
            return
        with open(self.path, "ab") as f:
            for event in fresh:
                f.write(json.dumps(event, ensure_ascii=False).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self.last_seq = fresh[-1]["seq"]


def consume(
    client: httpx.Client,
    cursor_file: CursorFile,
    handle: Callable[[list[Event]], None],
    wait_s: int = 30,
    limit: int = 500,
    handled_up_to: int | None = None,
) -> None:
    """Read the feed for ever from the saved cursor: each page to ``handle``, then its cursor
    saved. Network trouble and a busy server (503, with ``Retry-After``) are waited out with a
    capped backoff, and so is a server error (5xx); a refused token (401, 403) or a bad
    request ends the loop with an error. ``handled_up_to``: the last ``seq`` the handler holds
    (the effect is the truth: if it has less than the cursor says, say a restored backup, the
    read starts from it and the handler drops what it already has)."""
    cursor = cursor_file.load()
    if handled_up_to is not None:
        cursor = min(cursor, handled_up_to)
    backoff = 1.0
    while True:
        try:
            answer = client.get(
                "/api/v1/feed",
                params={"after": cursor, "limit": limit, "wait": wait_s},
                # The server holds the request up to wait_s: give it that and some.
                timeout=httpx.Timeout(10.0, read=wait_s + 10.0),
            )
        except httpx.TransportError as exc:
            print(f"feed unreachable ({exc!r}); again in {backoff:.0f} s", file=sys.stderr)
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            continue
        if answer.status_code == 429 or answer.status_code >= 500:
            retry_after = answer.headers.get("Retry-After", "")
            time.sleep(float(retry_after) if retry_after.isdigit() else backoff)
            backoff = min(backoff * 2, 30.0)
            continue
        answer.raise_for_status()
        backoff = 1.0
        page = answer.json()
        if page["events"]:
            handle(page["events"])
            cursor_file.save(page["next"])  # only once the page is handled
        cursor = page["next"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--cursor", type=Path, required=True, help="file keeping the cursor")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines file of events")
    parser.add_argument("--wait", type=int, default=30, help="long-poll seconds (0-30)")
    parser.add_argument("--limit", type=int, default=500, help="events per page (1-1000)")
    parser.add_argument(
        "--token-file", type=Path, help="file holding the API token (else $CLASSCAM_TOKEN)"
    )
    args = parser.parse_args(argv)
    if args.token_file:
        token = args.token_file.read_text().strip()
    else:
        token = os.environ.get("CLASSCAM_TOKEN", "")
    if not token:
        parser.error("no token: pass --token-file or set CLASSCAM_TOKEN")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=args.url, headers=headers) as client:
        try:
            sink = JsonlSink(args.out)
            consume(client, CursorFile(args.cursor), sink, args.wait, args.limit, sink.last_seq)
        except httpx.HTTPStatusError as exc:
            print(
                f"the feed refused: {exc.response.status_code} {exc.response.text}", file=sys.stderr
            )
            return 1
        except KeyboardInterrupt:
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
