"""The browser the dashboard tests stand on: Debian's Chromium starts under Playwright, renders
Chinese text and says it plays the H.264 MP4 clips cameras send (Debian builds it with the
proprietary codecs; a build without them would show every clip as broken)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser

pytestmark = pytest.mark.browser


def test_chromium_renders_a_page_and_plays_h264(browser: Browser) -> None:
    page = browser.new_page()
    try:
        page.set_content('<html lang="zh-CN"><h1 id="t">课堂核验</h1><video id="v"></video></html>')
        assert page.inner_text("#t") == "课堂核验"
        # Baseline and main profile H.264 in MP4, as libx264 on the cameras writes it.
        for codecs in ("avc1.42E01E", "avc1.4D401E"):
            answer = page.evaluate(
                "c => document.getElementById('v').canPlayType(`video/mp4; codecs=\"${c}\"`)",
                codecs,
            )
            assert answer == "probably", f"Chromium cannot play {codecs}: {answer!r}"
        assert "HeadlessChrome" in page.evaluate("navigator.userAgent")
    finally:
        page.close()
