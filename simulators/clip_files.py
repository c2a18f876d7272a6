"""Camera frames written as a clip file the way the agent's recorder encodes them.

Tests and benches of the server's video checks need real clips of simulated classrooms: H.264
(libx264) in MP4, a keyframe every ``keyint`` frames, no B-frames, at a low bitrate, so that
what the checks decode is what a camera in a classroom would send. One writer serves them all,
so a change to the agent's encoding settings is made in one place.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import av
import cv2
import numpy as np


def write_mp4(
    path: Path,
    frames: Iterable[np.ndarray],
    *,
    fps: int,
    bitrate: int = 300_000,
    keyint: int | None = None,
    faststart: bool = False,
) -> Path:
    """Encode BGR ``frames`` (all one size) as H.264 in MP4 at ``path`` and return ``path``.

    ``keyint`` is frames between keyframes (default ``fps``: one a second, as the agent cuts);
    ``faststart`` puts the index before the frames, as a streaming-friendly camera does."""
    pictures = iter(frames)
    first = next(pictures)
    height, width = first.shape[:2]
    every = fps if keyint is None else keyint
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.bit_rate = bitrate
        stream.codec_context.options = {
            "preset": "ultrafast",
            "x264-params": f"keyint={every}:min-keyint={every}:scenecut=0:bframes=0",
        }
        for index, bgr in enumerate(itertools.chain([first], pictures)):
            yuv = np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path
