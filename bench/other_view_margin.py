"""How far the other-classroom threshold is from what footage scores, and what it costs.

A clip that does not match its own classroom's reference view is matched to the views of the
institution's other classrooms (``ingest_server.view_match.other_view``); one whose median
inlier share against another view reaches ``other_view_similarity`` (0.2) is that classroom's
footage. This prints, over the simulator's classroom scenes (``StillSceneCamera``, encoded as
the agent encodes: H.264, a keyframe a second):

* each clip's median similarity to its own room's view, to a nudged and dimmer view of it
  (what another room's forged footage may look like), and the best against every unrelated
  view: the lowest match and the highest non-match, and the threshold between them;
* the cost of the other-view search per extra view (screening at the coarse scale) and of a
  full confirmation, on this machine.

Run: ``.venv/bin/python bench/other_view_margin.py`` (``--views N`` reference views, 40).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import av
import cv2
import numpy as np

from common.clock import VirtualClock
from ingest_server.video_checks import SanityThresholds, check_clip, reference_from_image
from ingest_server.view_match import View, median_similarity, other_view
from simulators.cameras import StillSceneCamera
from simulators.clip_files import write_mp4

W, H, FPS, SECONDS = 320, 240, 10, 8
T0 = datetime(2026, 11, 30, 1, 0, tzinfo=UTC)


def frames(scene: int, *, shift: tuple[int, int] = (0, 0), gain: float = 1.0) -> list[np.ndarray]:
    camera = StillSceneCamera(
        "bench", width=W, height=H, fps=FPS, clock=VirtualClock(T0), scene_seed=scene, pace=2.0
    )
    out = []
    matrix = np.array([[1, 0, shift[0]], [0, 1, shift[1]]], dtype=np.float32)
    for index in range(SECONDS * FPS):
        bgr = camera.draw(index / FPS, f"2026-11-30 09:00:{index / FPS:06.3f}")
        if shift != (0, 0):
            bgr = cv2.warpAffine(bgr, matrix, (W, H), borderMode=cv2.BORDER_REFLECT)
        out.append(np.clip(bgr.astype(np.float32) * gain, 0, 255).astype(np.uint8))
    return out


def encode(path: Path, pictures: list[np.ndarray]) -> Path:
    return write_mp4(path, pictures, fps=FPS)


def reference(scene: int) -> View:
    """The still a classroom's camera uploads at installation (a JPEG of one frame)."""
    camera = StillSceneCamera(
        "bench", width=W, height=H, fps=FPS, clock=VirtualClock(T0), scene_seed=scene
    )
    ok, jpeg = cv2.imencode(".jpg", camera.draw(0.0, "2026-11-30 08:00:00.000"))
    assert ok
    return View(reference_from_image(jpeg.tobytes()))


def clip_views(path: Path) -> list[View]:
    """The frames the check compares (one a second, ``reference_samples`` of them)."""
    limits = SanityThresholds()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONKEY"
        grays = [f.to_ndarray(format="gray") for f in container.decode(stream)]
    step = max(1, len(grays) // limits.reference_samples)
    return [View(g) for g in grays[step // 2 :: step][: limits.reference_samples]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=40, help="reference views (scenes 1..N)")
    parser.add_argument("--clips", type=int, default=5, help="scenes filmed (1..n)")
    args = parser.parse_args()
    limits = SanityThresholds()
    views = {scene: reference(scene) for scene in range(1, args.views + 1)}
    matches, non_matches, nudged = [], [], []
    screen_ms, confirm_ms = [], []
    with tempfile.TemporaryDirectory() as folder:
        for scene in range(1, args.clips + 1):
            path = encode(Path(folder) / f"{scene}.mp4", frames(scene))
            moved = encode(Path(folder) / f"{scene}-n.mp4", frames(scene, shift=(12, -8), gain=0.7))
            clip = clip_views(path)
            own = median_similarity(views[scene], clip)
            near = median_similarity(views[scene], clip_views(moved))
            others = [median_similarity(v, clip) for s, v in views.items() if s != scene]
            matches.append(own)
            nudged.append(near)
            non_matches.append(max(others))
            best = max(others)
            print(f"scene {scene:3}: own {own:.3f}  nudged {near:.3f}  best other {best:.3f}")
            # Cost: clip of this scene checked for a room whose own view it is not.
            unrelated = {str(s): v for s, v in views.items() if s != scene}
            started = time.perf_counter()
            found = other_view(
                clip, unrelated, screen=limits.moved_similarity, accept=limits.other_view_similarity
            )
            screen_ms.append((time.perf_counter() - started) * 1000 / len(unrelated))
            assert found is None, found
            started = time.perf_counter()
            median_similarity(views[scene], clip)
            confirm_ms.append((time.perf_counter() - started) * 1000)
            assert not check_clip(path, reference=views[scene]).moved
    threshold = limits.other_view_similarity
    print(
        f"lowest match {min(matches):.3f}, lowest nudged {min(nudged):.3f}, highest other "
        f"{max(non_matches):.3f}; threshold {threshold} (moved below {limits.moved_similarity})"
    )
    print(
        f"cost: {statistics.mean(screen_ms):.2f} ms per extra view screened, "
        f"{statistics.mean(confirm_ms):.0f} ms per full confirmation (at most 3 per clip)"
    )


if __name__ == "__main__":
    main()
