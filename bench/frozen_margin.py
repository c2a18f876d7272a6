"""How far the frozen check's threshold is from what real footage scores, on both sides.

Still pictures under sensor noise (a camera filming a printed photo) must score below
``frozen_change``; quiet live scenes (a person-sized figure leaning slowly, a window's light
changing) above it. Footage comes from:

* the synthetic still-scene camera (``simulators.cameras.StillSceneCamera``) through the agent's
  own recorder, spool and cutter at several bitrates, and encoded directly with libx264 at
  CRF 23/35/40, at noise +/-1, +/-3, +/-6 levels;
* the RTSP test camera (GStreamer ``videotestsrc`` with snow blended over it as noise), recorded
  by stream copy: still SMPTE bars and pinwheel, and the moving ball (when GStreamer's RTSP
  server is installed; ``make system-deps`` installs it).

For each clip it prints the clip's score, the value the verdict compares with the threshold
(the keyframe change at the ``frozen_share`` rank: below the threshold means frozen), and its
keyframes' changes; then the highest still score, the lowest live score and the margin.

Run: ``.venv/bin/python bench/frozen_margin.py`` (``--quick`` for a smaller grid).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from common.clock import VirtualClock
from edge_agent.camera import banner_text
from edge_agent.cutter import cut_window
from edge_agent.recorder import Recorder
from edge_agent.spool import Spool
from ingest_server.video_checks import SanityThresholds, check_clip
from simulators.cameras import StillSceneCamera
from simulators.rtsp_server import RtspCameraServer

T0 = datetime(2025, 3, 3, 1, 0, 0, tzinfo=UTC)
SECONDS = 30
LIMITS = SanityThresholds()


@dataclass(frozen=True)
class Result:
    source: str
    scene: str
    live: bool
    score: float
    changes: tuple[float, ...]
    frozen: bool


def clip_score(changes: tuple[float, ...]) -> float:
    """The change at the ``frozen_share`` rank: frozen exactly when it is below the threshold."""
    ordered = sorted(changes)
    return ordered[max(0, math.ceil(LIMITS.frozen_share * len(ordered)) - 1)]


def agent_clip(folder: Path, camera: StillSceneCamera, clock: VirtualClock, bitrate: int) -> Path:
    """Record through the agent's recorder and spool, cut as the agent cuts a window."""
    name = f"{camera.name.replace(':', '_')}_{bitrate}"
    with Spool(folder / f"spool_{name}") as spool:
        Recorder(camera, spool, clock, bitrate=bitrate).record_for(SECONDS + 1)
        cut = cut_window(
            spool,
            T0 + timedelta(seconds=0.5),
            T0 + timedelta(seconds=SECONDS),
            folder / f"{name}.mp4",
        )
    return cut.path


def crf_clip(folder: Path, camera: StillSceneCamera, crf: int) -> Path:
    """The same camera's frames encoded directly at a constant quality, a keyframe a second."""
    path = folder / f"{camera.name.replace(':', '_')}_crf{crf}.mp4"
    fps = round(camera.fps)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = camera.width, camera.height, "yuv420p"
        stream.codec_context.options = {
            "preset": "ultrafast",
            "crf": str(crf),
            "x264-params": f"keyint={fps}:min-keyint={fps}:scenecut=0:bframes=0",
        }
        for index in range(SECONDS * fps):
            wall = T0 + timedelta(seconds=index / fps)
            bgr = camera.draw(index / fps, banner_text("crf", wall))
            frame = av.VideoFrame.from_ndarray(
                np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420), dtype=np.uint8),
                format="yuv420p",
            )
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def rtsp_clip(folder: Path, server: RtspCameraServer, name: str) -> Path:
    """``SECONDS`` of the RTSP camera, stream-copied into MP4 as the agent stores it.

    The camera sends SPS/PPS as a packet of their own with the IDR's timestamp; they are joined
    to the picture, since MP4 takes one sample per timestamp."""
    path = folder / f"rtsp_{name}.mp4"
    with av.open(server.url, options={"rtsp_transport": "tcp"}, timeout=10) as source:
        video = source.streams.video[0]
        time_base = video.time_base or Fraction(1, 90_000)
        with av.open(str(path), "w") as sink:
            out = sink.add_stream_from_template(video)
            first: int | None = None
            pending: tuple[int, bytes, bool] | None = None

            def write(pts: int, data: bytes, key: bool) -> None:
                packet = av.Packet(data)
                packet.pts = packet.dts = pts
                packet.time_base = time_base
                packet.is_keyframe = key
                packet.stream = out
                sink.mux(packet)

            for packet in source.demux(video):
                if packet.pts is None or packet.size == 0:
                    continue
                if first is None:
                    if not packet.is_keyframe:
                        continue
                    first = packet.pts
                pts = packet.pts - first
                if pts * time_base >= SECONDS:
                    break
                if pending is not None and pending[0] == pts:
                    pending = (pts, pending[1] + bytes(packet), pending[2] or packet.is_keyframe)
                    continue
                if pending is not None:
                    write(*pending)
                pending = (pts, bytes(packet), packet.is_keyframe)
            if pending is not None:
                write(*pending)
    return path


def measure(source: str, scene: str, live: bool, path: Path) -> Result:
    report = check_clip(path)
    changes = report.keyframe_changes
    return Result(source, scene, live, clip_score(changes), changes, report.frozen)


def synthetic(folder: Path, quick: bool) -> list[Result]:
    results: list[Result] = []
    scenes = [("still", 0.0, 0.0), ("lean 0.5px/s", 0.5, 0.0), ("lean 1px/s", 1.0, 0.0)]
    scenes += [("lean 2px/s", 2.0, 0.0), ("window light 5%", 0.0, 0.05)]
    sizes = [(320, 240, 10)] if quick else [(320, 240, 10), (1280, 720, 15)]
    bitrates = [150_000, 1_000_000] if quick else [100_000, 300_000, 1_000_000]
    crfs = [35] if quick else [23, 35, 40]
    for width, height, fps in sizes:
        for noise in (1, 3, 6):
            for scene, pace, light in scenes:
                live = pace > 0 or light > 0
                for bitrate in bitrates:
                    clock = VirtualClock(T0)
                    camera = StillSceneCamera(
                        f"n{noise}-{pace}-{light}-{width}",
                        width=width,
                        height=height,
                        fps=fps,
                        clock=clock,
                        noise=noise,
                        pace=pace,
                        light=light,
                    )
                    path = agent_clip(folder, camera, clock, bitrate)
                    label = f"agent {width}x{height} {bitrate // 1000} kbit/s"
                    results.append(measure(label, f"{scene}, noise ±{noise}", live, path))
                    report_line(results[-1])
                for crf in crfs:
                    camera = StillSceneCamera(
                        f"n{noise}-{pace}-{light}-{width}",
                        width=width,
                        height=height,
                        fps=fps,
                        clock=VirtualClock(T0),
                        noise=noise,
                        pace=pace,
                        light=light,
                    )
                    path = crf_clip(folder, camera, crf)
                    label = f"x264 {width}x{height} CRF {crf}"
                    results.append(measure(label, f"{scene}, noise ±{noise}", live, path))
                    report_line(results[-1])
    return results


def rtsp(folder: Path, quick: bool) -> list[Result]:
    why = RtspCameraServer.available()
    if why:
        print(f"RTSP camera skipped: {why}")
        return []
    results: list[Result] = []
    cases = [("smpte75", 0, False), ("smpte75", 1, False), ("smpte75", 3, False)]
    cases += [("smpte75", 6, False), ("pinwheel", 3, False), ("pinwheel", 6, False)]
    cases += [("ball", 0, True), ("ball", 3, True), ("ball", 6, True)]
    bitrates = [300] if quick else [300, 800]
    for pattern, noise, live in cases:
        for kbps in bitrates:
            with RtspCameraServer(pattern=pattern, noise=noise, bitrate_kbps=kbps) as server:
                path = rtsp_clip(folder, server, f"{pattern}_{noise}_{kbps}")
            label = f"rtsp 640x360 {kbps} kbit/s"
            results.append(measure(label, f"{pattern}, noise ±{noise}", live, path))
            report_line(results[-1])
    return results


def report_line(r: Result) -> None:
    c = r.changes
    kind = "live " if r.live else "still"
    verdict = "frozen" if r.frozen else "live"
    print(
        f"{kind} {r.source:28} {r.scene:26} score {r.score:6.2f} -> {verdict:6}"
        f"  keyframes min {min(c):6.2f} median {float(np.median(c)):6.2f} max {max(c):6.2f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smaller grid (about a minute)")
    parser.add_argument("--no-rtsp", action="store_true", help="skip the RTSP camera")
    args = parser.parse_args(argv)
    started = time.monotonic()
    print(
        f"threshold frozen_change = {LIMITS.frozen_change} (frozen below it), "
        f"frozen_share = {LIMITS.frozen_share}, {SECONDS} s clips\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results = synthetic(folder, args.quick)
        if not args.no_rtsp:
            results += rtsp(folder, args.quick)
    still = [r for r in results if not r.live]
    live = [r for r in results if r.live]
    high = max(still, key=lambda r: r.score)
    low = min(live, key=lambda r: r.score)
    print()
    print(
        f"still clips: {len(still)}, scores {min(r.score for r in still):.2f}-{high.score:.2f}"
        f" (every keyframe: max {max(max(r.changes) for r in still):.2f})"
    )
    print(f"live clips:  {len(live)}, scores {low.score:.2f}-{max(r.score for r in live):.2f}")
    print(f"highest still: {high.score:.2f} ({high.source}, {high.scene})")
    print(f"lowest live:   {low.score:.2f} ({low.source}, {low.scene})")
    print(
        f"margin: {low.score - high.score:.2f} (threshold {LIMITS.frozen_change}: "
        f"{LIMITS.frozen_change - high.score:.2f} above the highest still, "
        f"{low.score - LIMITS.frozen_change:.2f} below the lowest live)"
    )
    wrong = [r for r in results if r.frozen == r.live]
    print(f"misjudged: {len(wrong)} of {len(results)}; {time.monotonic() - started:.0f} s")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
