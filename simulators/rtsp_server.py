"""A real RTSP IP camera on loopback: GStreamer's RTSP server serving a live H.264 test pattern.

Two halves in one file:

* run as a script by Debian's own ``/usr/bin/python3`` (the only Python that can import ``gi``,
  from ``python3-gi`` + ``gir1.2-gst-rtsp-server-1.0``), it serves
  ``videotestsrc is-live=true ! x264enc tune=zerolatency ! rtph264pay`` at
  ``rtsp://127.0.0.1:PORT/cam`` and prints ``ready`` once it listens;
* imported from our venv, ``RtspCameraServer`` starts, kills and restarts that child process,
  so a test can drop the camera mid-recording and bring it back on the same port.

The stream looks like a typical IP camera's: SPS/PPS in the SDP and again before every IDR
(``config-interval=-1``), no B-frames, a fixed GOP of ``gop_frames`` frames (IP cameras use
1–4 s), RTP timestamps at 90 kHz. Nothing in this file is imported by the agent.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

SYSTEM_PYTHON = "/usr/bin/python3"
MOUNT = "/cam"


def pipeline(
    width: int,
    height: int,
    fps: int,
    gop_frames: int,
    bitrate_kbps: int,
    pattern: str = "ball",
    noise: int = 0,
) -> str:
    """The launch line the server builds for each (shared) media; ``pattern`` "snow" (noise)
    makes the encoder use its whole bitrate, for throughput figures. ``noise`` > 0 blends fresh
    snow over the pattern so each pixel varies by about +/-``noise`` levels from frame to
    frame, as a sensor's noise does: with a still pattern ("smpte", "checkers-8") a camera
    filming a printed picture."""
    raw = f"video/x-raw,width={width},height={height},framerate={fps}/1"
    source, branches = f"videotestsrc is-live=true pattern={pattern} ! {raw}", ""
    if noise > 0:
        # Snow is uniform over 0-255: at alpha a its contribution spans 255*a levels.
        alpha = min(1.0, 2 * noise / 255)
        source = f"compositor name=mix sink_1::alpha={alpha:.4f} ! videoconvert ! {raw}"
        branches = (
            f" videotestsrc is-live=true pattern={pattern} ! {raw} ! mix.sink_0"
            f" videotestsrc is-live=true pattern=snow ! {raw} ! mix.sink_1"
        )
    return (
        f"( {source} ! "
        f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop_frames} "
        f"bitrate={bitrate_kbps} ! video/x-h264,profile=constrained-baseline ! "
        f"rtph264pay name=pay0 pt=96 config-interval=-1{branches} )"
    )


def _serve(args: argparse.Namespace) -> None:
    """The child: runs under /usr/bin/python3 with GStreamer's introspection bindings."""
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        pipeline(
            args.width,
            args.height,
            args.fps,
            args.gop_frames,
            args.bitrate,
            args.pattern,
            args.noise,
        )
    )
    # One encoder for every client, as a camera has: a second client joins the same stream.
    factory.set_shared(True)
    server.get_mount_points().add_factory(MOUNT, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        sys.exit(2)
    loop = GLib.MainLoop()
    # SIGTERM ends the loop cleanly; SIGKILL (what a test uses to "unplug" it) needs nothing.
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    print("ready", flush=True)
    loop.run()


class RtspCameraServer:
    """The parent side: a GStreamer RTSP camera in a child process on a fixed loopback port."""

    def __init__(
        self,
        port: int | None = None,
        *,
        width: int = 640,
        height: int = 360,
        fps: int = 15,
        gop_frames: int = 15,
        bitrate_kbps: int = 800,
        pattern: str = "ball",
        noise: int = 0,
        python: str = SYSTEM_PYTHON,
    ) -> None:
        from simulators.broker import free_port

        self.port = port or free_port()
        self.width, self.height, self.fps = width, height, fps
        self.gop_frames = gop_frames
        self.bitrate_kbps = bitrate_kbps
        self.pattern = pattern
        self.noise = noise
        self.python = python
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{MOUNT}"

    @staticmethod
    def available(python: str = SYSTEM_PYTHON) -> str | None:
        """None if the server can run here, else why not (what to install)."""
        if not Path(python).exists():
            return f"{python} is missing"
        probe = subprocess.run(
            [
                python,
                "-I",
                "-c",
                "import gi; gi.require_version('GstRtspServer', '1.0');"
                "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
                "import sys; sys.exit(0 if all(Gst.ElementFactory.find(e) for e in "
                "('videotestsrc', 'x264enc', 'rtph264pay')) else 3)",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode:
            return (
                "GStreamer RTSP server missing: apt-get install python3-gi "
                "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-{base,good,ugly} "
                f"({probe.stderr.strip()[-200:]})"
            )
        return None

    def start(self, timeout: float = 15.0) -> None:
        """Start the child and wait until it listens."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("RTSP server already running")
        # -I: isolated, so neither this directory (where simulators/operator.py would shadow
        # the stdlib's) nor our venv's PYTHON* variables reach Debian's Python.
        cmd = [
            self.python,
            "-I",
            str(Path(__file__).resolve()),
            "--port",
            str(self.port),
            "--width",
            str(self.width),
            "--height",
            str(self.height),
            "--fps",
            str(self.fps),
            "--gop-frames",
            str(self.gop_frames),
            "--bitrate",
            str(self.bitrate_kbps),
            "--pattern",
            self.pattern,
            "--noise",
            str(self.noise),
        ]
        self.process = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        line = stdout.readline()  # blocks until "ready" or the child exits (EOF)
        if line.strip() != "ready" or time.monotonic() > deadline:
            self.process.kill()
            _, err = self.process.communicate(timeout=5)
            raise RuntimeError(f"RTSP server did not start: {line.strip()} {err.strip()[-500:]}")

    def kill(self) -> None:
        """Drop dead, as a camera losing power does: no RTSP TEARDOWN, no TCP FIN from a host."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self._close_pipes()

    def stop(self) -> None:
        """Stop cleanly (SIGTERM), or kill after a grace period."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.process is not None:
            for pipe in (self.process.stdout, self.process.stderr):
                if pipe is not None:
                    pipe.close()

    def __enter__(self) -> RtspCameraServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Serve the test camera until SIGTERM (run with /usr/bin/python3)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--gop-frames", type=int, default=15)
    parser.add_argument("--bitrate", type=int, default=800, help="kbit/s")
    parser.add_argument("--pattern", default="ball", help="videotestsrc pattern (snow: noise)")
    parser.add_argument("--noise", type=int, default=0, help="+/- levels of snow over it")
    _serve(parser.parse_args(argv))


if __name__ == "__main__":
    main()
