"""Fixtures for the dashboard in a real browser: Debian's Chromium driven by Playwright, the
server's HTTP app under uvicorn on a free port, over a school seeded through the server's own
paths (``school.py``).

Chromium is the apt package (``/usr/bin/chromium``, installed by ``make system-deps``), never a
downloaded build: a machine without it fails these tests with a message that says so, rather
than skipping them. Screenshots go to ``test-artifacts/dashboard/`` at the repository's root.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Request,
    Response,
    ViewportSize,
    sync_playwright,
)
from school import NOW, School, build_school

from common.clock import VirtualClock
from ingest_server.api import create_app
from ingest_server.api.deps import ApiContext
from simulators.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
CHROMIUM = Path("/usr/bin/chromium")
# Headless, no sandbox (containers and CI run as root), no GPU, and nothing the browser would
# fetch on its own (QUIC, updates, sync, first-run pages): the only traffic is the test's.
# Playwright's launch gives each browser a fresh temporary profile (user data dir).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Shared memory in /tmp instead: a container's /dev/shm is often 64 MB, which full-page
    # screenshots of long pages outgrow (the renderer then crashes).
    "--disable-dev-shm-usage",
]
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 375, "height": 740}
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, for one test file. Not for the whole run: Playwright's
    sync API keeps an asyncio loop running in the main thread while it is open, and a later
    test file on the same worker that calls ``asyncio.run`` would fail."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard tests drive Debian's Chromium; install it with"
            " `make system-deps` (or `sudo apt-get install chromium`)"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Dashboard:
    """The running server over the seeded school."""

    url: str
    school: School

    def token(self, who: str) -> str:
        return self.school.tokens[who]


@pytest.fixture(scope="session")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """The seeded school behind the real HTTP app on uvicorn, its clock stopped at ``NOW``
    (seeded once per run: the pages only read it)."""
    data_dir = tmp_path_factory.mktemp("school")
    school = build_school(data_dir, f"sqlite:///{data_dir / 'classcam.db'}")
    context = ApiContext(
        school.settings,
        school.factory,
        school.store,
        recompute=lambda ids: None,
        clock=VirtualClock(start=NOW),
        send_command=school.send_command,
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(context), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="dashboard-uvicorn", daemon=True)
    thread.start()
    try:
        _wait_started(server, thread)
        yield Dashboard(f"http://127.0.0.1:{port}", school)
    finally:
        server.should_exit = True
        thread.join(10)
        school.close()


def _wait_started(server: uvicorn.Server, thread: threading.Thread) -> None:
    started = threading.Event()

    def watch() -> None:
        while thread.is_alive() and not server.started:
            started.wait(0.02)
        started.set()

    threading.Thread(target=watch, daemon=True).start()
    assert started.wait(15), "uvicorn did not start within 15 s"
    assert server.started, "uvicorn stopped while starting"


@dataclass
class Watched:
    """A browser tab whose console errors, uncaught exceptions, failed requests and HTTP
    error answers are kept, to be asserted empty."""

    page: Page
    context: BrowserContext
    base: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    error_responses: list[str] = field(default_factory=list)

    def goto(self, path: str) -> Response | None:
        return self.page.goto(self.base + path, wait_until="load")

    def problems(self) -> list[str]:
        return [
            *(f"console error: {m}" for m in self.console_errors),
            *(f"page error: {m}" for m in self.page_errors),
            *(f"request failed: {m}" for m in self.failed_requests),
            *(f"HTTP error: {m}" for m in self.error_responses),
        ]

    def clear(self) -> None:
        for kept in (
            self.console_errors,
            self.page_errors,
            self.failed_requests,
            self.error_responses,
        ):
            kept.clear()

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def login(self, token: str, next_path: str = "/ui/queue") -> None:
        """Sign in through the login form, as a person does."""
        self.goto(f"/ui/login?next={next_path}")
        self.page.get_by_test_id("login-token").fill(token)
        self.page.get_by_test_id("login-submit").click()
        self.page.wait_for_load_state("load")


@pytest.fixture
def open_tab(browser: Browser, dashboard: Dashboard) -> Iterator[Callable[..., Watched]]:
    """``open_tab(viewport=DESKTOP)``: a fresh browser context (no cookies) with one watched tab;
    closed at the end of the test."""
    contexts: list[BrowserContext] = []

    def open_(viewport: ViewportSize | None = None, **options: Any) -> Watched:
        # A browser as a supervisor's desk in China has it (its own date inputs in Chinese);
        # the pages' language and times must not depend on it anyway.
        options = {"locale": "zh-CN", "timezone_id": "Asia/Shanghai", **options}
        context = browser.new_context(viewport=viewport or DESKTOP, **options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        watched = Watched(page, context, dashboard.url)

        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                watched.console_errors.append(f"{message.text} at {message.location}")

        def failed(request: Request) -> None:
            if request.resource_type == "media" and request.failure == "net::ERR_ABORTED":
                # Chromium's media player cancels its own reads (the file's first bytes once
                # the metadata is in, a range it no longer needs after a seek) and asks again
                # with a Range header: not a failure of the page.
                return
            watched.failed_requests.append(f"{request.method} {request.url}: {request.failure}")

        def answered(response: Response) -> None:
            if response.status >= 400:
                watched.error_responses.append(f"{response.status} {response.url}")

        page.on("console", console)
        page.on("pageerror", lambda error: watched.page_errors.append(str(error)))
        page.on("requestfailed", failed)
        page.on("response", answered)
        return watched

    try:
        yield open_
    finally:
        for context in contexts:
            context.close()
