"""A real RTSP camera on loopback for the RTSP backend's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from simulators.rtsp_server import RtspCameraServer


@pytest.fixture
def rtsp_camera() -> Iterator[RtspCameraServer]:
    """A GStreamer RTSP camera on a free loopback port (640x360, 15 fps, GOP 22 frames)."""
    why = RtspCameraServer.available()
    if why is not None:
        pytest.fail(f"{why}; `make system-deps` installs it")
    server = RtspCameraServer(gop_frames=22)
    server.start()
    try:
        yield server
    finally:
        server.kill()
