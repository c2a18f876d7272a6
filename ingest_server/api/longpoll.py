"""Waiting inside a request for what a commit brings: the feed's long-poll (``GET /feed?wait=``)
and the roll call's wait for its still share this one loop.

A commit that appends to the feed in this process wakes the wait within milliseconds
(``feed.commits``); another process's commit is seen at the next re-read, every ``recheck_s``.
The wait is the HTTP request's, in real seconds: not the server's (maybe simulated) clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from typing import TypeVar

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from ingest_server import feed

T = TypeVar("T")


class TooManyWaiters(Exception):
    """``limit`` requests listen for feed commits already (the caller answers 503)."""


async def read_until(
    request: Request,
    read: Callable[[], T],
    done: Callable[[T], bool],
    *,
    wait_s: float,
    recheck_s: float,
    limit: int,
    poll_when_full: bool = False,
) -> T:
    """``read()`` (in a worker thread), again after each feed commit or every ``recheck_s``,
    until ``done`` of its answer, ``wait_s`` seconds have passed or the client has gone: the
    last answer. When ``limit`` listeners are in already: TooManyWaiters before any read, or,
    with ``poll_when_full`` (a caller bounded by its own count), the re-reads alone."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    woken = asyncio.Event()

    def wake() -> None:  # in the committing thread
        with suppress(RuntimeError):  # the loop has closed: nobody waits there any more
            loop.call_soon_threadsafe(woken.set)

    with feed.commits.listening(wake, limit) as admitted:
        if not admitted and not poll_when_full:
            raise TooManyWaiters
        while True:
            woken.clear()  # before the read: a commit after it wakes us again
            answer = await run_in_threadpool(read)
            remaining = deadline - loop.time()
            if done(answer) or remaining <= 0:
                return answer
            with suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(recheck_s, remaining))
            if await request.is_disconnected():
                return answer  # nobody to answer: give the waiter's place back
