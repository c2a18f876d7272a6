"""The camera config, the factory that builds each backend, and the reconnect backoff."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from camera_helpers import T0

from common.clock import VirtualClock
from edge_agent.camera import SyntheticCamera
from edge_agent.cameras import Backoff, EncodedCamera, backoff_delay, open_camera
from edge_agent.cameras.v4l2 import V4L2Camera
from edge_agent.config import CameraConfig, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[3]


def config_file(tmp_path: Path, camera: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'device_id = "cam-1"\n[camera]\n{textwrap.dedent(camera)}')
    return path


@pytest.mark.parametrize(
    ("camera", "field", "message"),
    [
        ('kind = "v4l2"', "camera.device", "needs a device"),
        ('kind = "rtsp"', "camera.url", "needs a url"),
        ('kind = "rtsp"\nurl = "http://cam/stream"', "camera.url", "rtsp://"),
        ('kind = "rtsp"\nurl = "rtsp://admin:secret@cam/1"', "camera.url", "password_file"),
        ('kind = "rtsp"\nurl = "rtsp://c/1"\npassword_file = "pw"', "camera.password_file", "user"),
        ('kind = "synthetic"\nurl = "rtsp://cam/1"', "camera.url", "takes no url"),
        ('kind = "rtsp"\nurl = "rtsp://c/1"\ndevice = "/dev/video0"', "camera.device", "no device"),
        ('kind = "picamera2"\ndevice = "/dev/video0"', "camera.device", "camera number"),
        ('kind = "picamera2"\nurl = "rtsp://cam/1"', "camera.url", "takes no url"),
        ('kind = "onvif"', "camera.kind", "Input should be"),
        ('kind = "rtsp"\nurl = "rtsp://c/1"\nrtsp_transport = "http"', "camera.rtsp_transport", ""),
    ],
)
def test_bad_camera_configs_name_the_field(
    tmp_path: Path, camera: str, field: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config_file(tmp_path, camera))
    assert caught.value.field == field
    assert message in str(caught.value)


def test_each_kind_loads_with_what_it_needs(tmp_path: Path) -> None:
    v4l2 = load_config(config_file(tmp_path, 'kind = "v4l2"\ndevice = "/dev/video0"')).camera
    assert (v4l2.kind, v4l2.device) == ("v4l2", "/dev/video0")
    rtsp = load_config(
        config_file(tmp_path, 'kind = "rtsp"\nurl = "rtsp://admin@cam:554/1"\npassword_file = "pw"')
    ).camera
    assert rtsp.password_file == tmp_path / "pw"  # resolved beside the config, like secrets
    assert rtsp.rtsp_transport == "tcp"
    assert load_config(config_file(tmp_path, 'kind = "picamera2"')).camera.device is None
    example = load_config(ROOT / "firmware_config" / "agent.example.toml").camera
    assert example == CameraConfig.model_validate({})


def test_the_factory_builds_each_backend(tmp_path: Path) -> None:
    clock = VirtualClock(T0)
    synthetic = open_camera(CameraConfig(kind="synthetic", width=320, height=240), clock=clock)
    assert isinstance(synthetic, SyntheticCamera) and (synthetic.width, synthetic.height) == (
        320,
        240,
    )
    v4l2 = open_camera(CameraConfig(kind="v4l2", device="/dev/video7"), clock=clock)
    assert isinstance(v4l2, V4L2Camera) and not isinstance(v4l2, EncodedCamera)
    assert v4l2.name == "v4l2:/dev/video7"
    (tmp_path / "pw").write_text("s3cret\n")
    rtsp = open_camera(
        CameraConfig(kind="rtsp", url="rtsp://admin@cam/1", password_file=tmp_path / "pw"),
        clock=clock,
    )
    assert isinstance(rtsp, EncodedCamera)
    assert rtsp.url == "rtsp://admin:s3cret@cam/1"  # type: ignore[attr-defined]
    assert "s3cret" not in rtsp.name
    pi = open_camera(CameraConfig(kind="picamera2", fps=30), clock=clock)
    assert isinstance(pi, EncodedCamera) and pi.iperiod == 30  # type: ignore[attr-defined]


def test_backends_are_imported_only_when_used() -> None:
    script = textwrap.dedent(
        """
        import json, sys
        from common.clock import SystemClock
        from edge_agent.cameras import open_camera
        from edge_agent.config import CameraConfig
        seen = {}
        def loaded():
            return sorted(m for m in sys.modules
                          if m.startswith(("edge_agent.cameras.", "picamera2", "libcamera")))
        open_camera(CameraConfig(), clock=SystemClock())
        seen["synthetic"] = loaded()
        open_camera(CameraConfig(kind="rtsp", url="rtsp://cam/1"), clock=SystemClock())
        seen["rtsp"] = loaded()
        open_camera(CameraConfig(kind="picamera2"), clock=SystemClock())
        seen["picamera2"] = loaded()
        print(json.dumps(seen))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    seen = json.loads(result.stdout)
    assert seen["synthetic"] == []
    assert "edge_agent.cameras.rtsp" in seen["rtsp"]
    assert "edge_agent.cameras.picamera2" not in seen["rtsp"]
    # Building the picamera2 backend does not import picamera2 itself: only recording does.
    assert "edge_agent.cameras.picamera2" in seen["picamera2"]
    assert not [m for m in seen["picamera2"] if m.startswith(("picamera2", "libcamera"))]


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (40, 30.0), (5000, 30.0)],
)
def test_backoff_doubles_to_its_cap_with_downward_jitter(attempt: int, ceiling: float) -> None:
    rng = random.Random(attempt)
    delays = [backoff_delay(attempt, 0.5, 30.0, rng, jitter=0.5) for _ in range(200)]
    assert all(ceiling * 0.5 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > ceiling * 0.3  # really jittered, not a fixed step


def test_backoff_resets_and_rejects_nonsense() -> None:
    backoff = Backoff(initial_s=1.0, cap_s=8.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.next_delay() == 1.0
    with pytest.raises(ValueError):
        backoff_delay(0, 2.0, 1.0, random.Random())
    with pytest.raises(ValueError):
        backoff_delay(0, 1.0, 2.0, random.Random(), jitter=1.0)
