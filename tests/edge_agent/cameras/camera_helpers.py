"""Real H.264 for the camera backends' tests: encoded here with libx264, read back from MP4."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from common.clock import VirtualClock
from edge_agent.camera import SyntheticCamera
from edge_agent.cameras.h264 import nal_units

T0 = datetime(2025, 3, 3, 1, 0, 0, tzinfo=UTC)
MICROSECONDS = Fraction(1, 1_000_000)


@dataclass(frozen=True)
class EncodedUnit:
    """One access unit as an encoder hands it out: Annex B bytes, pts, keyframe flag."""

    data: bytes
    pts: int
    keyframe: bool


def synthetic_images(count: int, width: int, height: int, fps: float) -> list[np.ndarray]:
    """Frames of the synthetic camera (moving, time-stamped, each one different)."""
    clock = VirtualClock(T0)
    camera = SyntheticCamera("dev-h264", width=width, height=height, fps=fps, clock=clock)
    camera.open()
    return [camera.read().image for _ in range(count)]


def encode_h264(
    count: int,
    *,
    fps: float = 15.0,
    gop: int = 15,
    width: int = 320,
    height: int = 240,
    time_base: Fraction = MICROSECONDS,
    first_pts: int = 0,
) -> list[EncodedUnit]:
    """Real libx264 output shaped like picamera2's H264Encoder: Annex B, SPS/PPS repeated
    before every IDR (no global header), an IDR every ``gop`` frames, no B-frames."""
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = time_base
    ctx.framerate = Fraction(fps).limit_denominator(1001)
    ctx.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0",
    }
    units = []
    for i, image in enumerate(synthetic_images(count, width, height, fps)):
        yuv = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = first_pts + round(i / (fps * time_base))
        for packet in ctx.encode(frame):
            units.append(EncodedUnit(bytes(packet), int(packet.pts or 0), packet.is_keyframe))
    for packet in ctx.encode(None):
        units.append(EncodedUnit(bytes(packet), int(packet.pts or 0), packet.is_keyframe))
    return units


def segment_packets(path: Path) -> list[av.Packet]:
    with av.open(str(path)) as container:
        return [p for p in container.demux(video=0) if p.size]


def avcc_nal_units(data: bytes) -> list[bytes]:
    """NAL units of a length-prefixed (MP4) sample."""
    units, i = [], 0
    while i + 4 <= len(data):
        size = int.from_bytes(data[i : i + 4], "big")
        units.append(data[i + 4 : i + 4 + size])
        i += 4 + size
    return units


def slices(units: list[bytes]) -> list[bytes]:
    """The coded-picture NAL units (types 1 and 5): what an encoder made of the pictures."""
    return [u for u in units if u[0] & 0x1F in (1, 5)]


def annexb_slices(data: bytes) -> list[bytes]:
    return slices(nal_units(data))


def decode_count(path: Path) -> int:
    """How many pictures a clip decodes to (raises on a broken stream)."""
    with av.open(str(path)) as container:
        container.streams.video[0].codec_context.options = {"err_detect": "explode"}
        return sum(1 for _ in container.decode(video=0))


def pairwise_steps(values: list[int]) -> set[int]:
    return {b - a for a, b in itertools.pairwise(values)}
