"""What one photo upload costs the server in memory and time: a hostile PNG (tiny on the wire,
81 MP when decoded) against an honest 12 MP phone JPEG, the baseline, measured in the same run.

Each case runs ``ingest_server.photos.read_photo`` in a fresh process (same imports) and reports
the process's peak RSS and the call's wall time; the ratios are hostile / honest.
Run: ``.venv/bin/python bench/photo_memory.py``.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

ROOT = Path(__file__).resolve().parent.parent

MEASURE = """
import json, sys, time
sys.path.insert(0, sys.argv[2])
from ingest_server.photos import PhotoRejected, read_photo
data = open(sys.argv[1], "rb").read()
start = time.perf_counter()
try:
    read_photo(data, app_taken_at=None, app_lat=None, app_lon=None, app_datum=None)
    outcome = "accepted"
except PhotoRejected as exc:
    outcome = f"refused: {exc.reason.value}"
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"outcome": outcome, "rss_mib": peak / 1024, "s": time.perf_counter() - start}))
"""


def hostile_png(width: int, height: int) -> bytes:
    """A valid PNG of black pixels: a few hundred KiB that decode to width × height × 3 bytes."""
    row = b"\x00" + b"\x00" * (width * 3)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def honest_jpeg() -> bytes:
    sys.path.insert(0, str(ROOT))
    from simulators.phone import make_photo

    return make_photo(
        taken_at=datetime(2026, 11, 25, 1, 0, tzinfo=UTC),
        lat=31.2304,
        lon=121.4737,
        scene_seed=3,
        size=(4000, 3000),
    )


def measure(path: Path) -> dict[str, float | str]:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float | str] = json.loads(done.stdout)
    return result


def main() -> None:
    with TemporaryDirectory() as tmp:
        cases = {
            "honest 12 MP JPEG (baseline)": honest_jpeg(),
            "hostile 81 MP PNG": hostile_png(9000, 9000),
        }
        results = {}
        for name, data in cases.items():
            path = Path(tmp) / "photo"
            path.write_bytes(data)
            results[name] = measure(path)
            r = results[name]
            print(
                f"{name}: {len(data) // 1024} KiB, {r['outcome']}, "
                f"peak RSS {float(r['rss_mib']):.0f} MiB, {float(r['s']):.2f} s"
            )
        base, bad = results.values()
        memory = float(bad["rss_mib"]) / float(base["rss_mib"])
        speed = float(bad["s"]) / float(base["s"])
        print(f"hostile / honest: memory {memory:.2f}x, time {speed:.2f}x")


if __name__ == "__main__":
    main()
