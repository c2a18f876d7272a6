"""The real parts a replay runs on, started and stopped: the shared clock, a broker, the server,
and per device its provisioned state, its 4G link, its modem and its agent process (or the
forger that holds its key).

Nothing here decides when things happen (``replay_run`` does); this module only knows how to
start each part, change it (link down, power off) and always take it all down again.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from simulators import fake_modem
from simulators.broker import MosquittoBroker, kill_process, stop_process
from simulators.forger import Forger
from simulators.harness import Broker, Device, ServerProcess
from simulators.netlink import ShapedLink
from simulators.plan import DevicePlan, LinkShape, ReplayPlan
from simulators.replay_remote import RemoteBroker, wait_for_server
from simulators.school import provision_quickly, wait_until
from simulators.sim_clock import ClockConductor, SharedClock

log = logging.getLogger(__name__)


# paho waits whole real seconds between reconnects (edge_agent.uplink), up to the config's
# reconnect_max_s: production's 120 s. A replay caps the real wait so that it stays near 120
# simulated seconds, or a device coming back after a long outage would take an hour of
# simulated time to reconnect.
PRODUCTION_RECONNECT_MAX_S = 120.0
# Keyframes every second keep cut bounds exact; segments of 5 s rather than 1 s, because at 60x
# a 1 s segment is 60 new files (fsync, index row) per real second per agent, and the recorder
# then falls behind its camera: 13 frames_late gaps (16 s) against 3 (4.6 s) for one 8-minute
# class on two agents, measured on this 2-core machine.
SEGMENT_S = 5.0
# The uploader gives up on an answer to init or fin after ack_timeout_s of its own (simulated)
# clock: production's 20 s is a third of a real second at 60x, less than the server takes to
# verify a clip on a busy machine, and every clip failed with no_answer until parked. The
# server's work does not get faster with the clock, so it keeps a real-time budget.
ACK_TIMEOUT_REAL_S = 5.0
PRODUCTION_ACK_TIMEOUT_S = 20.0


def agent_settings(
    device: DevicePlan, link: ShapedLink, modem_path: str, speed: float
) -> dict[str, Any]:
    """agent.toml for a simulated device: its camera as the plan films it, 1 s keyframes (cut
    bounds exact to a second), a low bitrate (small clips on thin links), its broker reached
    through its own link (reconnecting on simulated time as far as paho's whole seconds allow,
    waiting for the server's answers in real time), its modem on a pty."""
    reconnect_max = max(1.0, round(PRODUCTION_RECONNECT_MAX_S / speed))
    ack_timeout = max(PRODUCTION_ACK_TIMEOUT_S, ACK_TIMEOUT_REAL_S * speed)
    return {
        "camera": {
            "kind": "synthetic",
            "width": device.camera.width,
            "height": device.camera.height,
            "fps": device.camera.fps,
        },
        "recording": {"segment_seconds": SEGMENT_S, "keyframe_interval_s": 1.0, "bitrate": 100_000},
        "broker": {
            "host": link.host,
            "port": link.port,
            "tls": False,
            "reconnect_min_s": 1.0,
            "reconnect_max_s": reconnect_max,
        },
        "upload": {"ack_timeout_s": ack_timeout},
        "modem": {"port": modem_path},
    }


def link_rate(shape: LinkShape) -> int:
    """Bytes per second of a shape given in kbit/s (0: unlimited)."""
    return int(shape.rate_kbit * 1000 / 8)


def modem_profile(name: str) -> fake_modem.FakeProfile:
    """``quectel_ec25`` → ``fake_modem.QUECTEL_EC25`` (a profile named in a scenario)."""
    profile = getattr(fake_modem, name.upper(), None)
    if not isinstance(profile, fake_modem.FakeProfile):
        raise ValueError(f"unknown modem profile {name!r}")
    return profile


@dataclass
class DeviceRig:
    """One simulated device and everything around it."""

    plan: DevicePlan
    device: Device
    link: ShapedLink
    modem: fake_modem.FakeModem
    camera_plan: Path
    process: subprocess.Popen[bytes] | None = None
    forger: Forger | None = None
    powered: bool = True
    shape: LinkShape = field(default_factory=LinkShape)
    power_cuts: int = 0
    link_downs: int = 0

    @property
    def device_id(self) -> str:
        return self.plan.device_id

    def outbox_waiting(self) -> tuple[int, datetime | None]:
        """Clips and stills waiting in the agent's outbox, and when the next is due (device
        clock; None: now). Read-only, beside the running agent (SQLite WAL)."""
        path = self.device.state_dir / "outbox" / "outbox.sqlite3"
        if self.forger is not None or not path.exists():
            return 0, None
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                count, due = db.execute(
                    "SELECT count(*), min(coalesce(next_attempt_us, 0)) FROM outbox"
                    " WHERE state = 'pending'"
                ).fetchone()
        except sqlite3.Error:
            return 0, None
        if not count:
            return 0, None
        return int(count), (None if not due else _from_us(int(due)))


def _outbox_empty(rig: DeviceRig) -> bool:
    return rig.outbox_waiting()[0] == 0


def _from_us(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, tz=UTC)


class ReplayStack:
    """Starts the parts of ``plan`` under ``workdir`` and takes them down in ``close()``."""

    def __init__(
        self,
        plan: ReplayPlan,
        workdir: Path,
        *,
        speed: float,
        broker_url: str | None = None,
        server_url: str | None = None,
        token: str | None = None,
        start_forger: Callable[[DeviceRig, ReplayStack], Forger] | None = None,
    ) -> None:
        """``start_forger`` connects the adversary of a device whose plan has a forger
        (``simulators.replay_forgery.start_forger``; the replay passes it in)."""
        if server_url and not broker_url:
            raise ValueError("--server needs --broker: the server's own broker")
        self.plan = plan
        self.start_forger = start_forger
        self.workdir = workdir
        self.speed = speed
        self.broker_url, self.server_url, self.given_token = broker_url, server_url, token
        self.clock_path = workdir / "clock.json"
        self.conductor: ClockConductor | None = None
        self.broker: MosquittoBroker | RemoteBroker | None = None
        self.server: ServerProcess | None = None
        self.rigs: dict[str, DeviceRig] = {}
        self.api_url = ""
        self.admin_token = ""
        self._exit = contextlib.ExitStack()

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Everything up, in an order that needs no reloads: accounts before the broker starts,
        keys before the import, the server before the agents. The clock runs at real speed while
        this takes its seconds, and at the replay's speed from ``run_at_speed()``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conductor = ClockConductor(self.clock_path, self.plan.clock_start, 1.0)
        self._exit.callback(self.conductor.close)
        broker = self._make_broker()
        devices = {
            d.device_id: self._provision(d, broker) for d in self.plan.devices
        }  # before the broker starts: one password file, no reload per device
        broker.start()
        self._exit.callback(broker.stop)
        self._start_server(broker, devices)
        filmed = list(self.rigs.values())  # forgers' cameras too: they were installed honestly
        stills = [self._agent_cli(r, "reference") for r in filmed]
        for rig, still in zip(filmed, stills, strict=True):
            if still.wait(timeout=120) != 0:
                # A device without its reference still is not the one the scenario describes
                # (the server has nothing to compare its picture with): stop here, loudly.
                log_tail = (rig.device.root / "agent.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(
                    f"reference still of {rig.device_id} failed (status {still.returncode}):"
                    f"\n{log_tail}"
                )
        self._installed_honestly([r for r in self.rigs.values() if r.plan.forger])
        for rig in self.rigs.values():
            self.power_on(rig)

    def _installed_honestly(self, rigs: list[DeviceRig]) -> None:
        """Cameras an adversary takes over were installed honestly first: the agent runs until
        the installation's reference still of its own room is uploaded, then stops, and the
        forger takes the device from ``power_on``. So the server holds the room's true view, as
        it would, and forged footage of another room is told from it."""
        for rig in rigs:
            rig.process = self._agent_cli(rig, "run")
        try:
            for rig in rigs:
                if not wait_until(functools.partial(_outbox_empty, rig), timeout=60):
                    raise RuntimeError(f"{rig.device_id} did not upload its reference still")
        finally:
            for rig in rigs:
                stop_process(rig.process, timeout=10)
                rig.process = None

    def run_at_speed(self) -> None:
        assert self.conductor is not None
        self.conductor.set_speed(self.speed)

    def _make_broker(self) -> MosquittoBroker | RemoteBroker:
        if self.broker_url:
            self.broker = RemoteBroker(self.broker_url, self.workdir / "broker-accounts.json")
        else:
            self.broker = MosquittoBroker(self.workdir / "broker")
        return self.broker

    def _provision(self, plan: DevicePlan, broker: Broker) -> Device:
        link = ShapedLink(
            broker.host,
            broker.port,
            rate_bytes_per_s=link_rate(plan.link),
            latency_s=plan.link.latency_ms / 1000,
            loss_pct=plan.link.loss_pct,
            seed=sum(plan.device_id.encode()),
            time_scale=lambda: self.clock.speed,
        ).start()
        self._exit.callback(link.stop)
        # The modem tells the network's time: true simulated time, whatever the device's
        # own clock says (that difference is what the agent measures and reports).
        modem_clock = SharedClock(self.clock_path)
        self._exit.callback(modem_clock.close)
        modem = fake_modem.FakeModem(modem_profile(plan.modem), clock=modem_clock).start()
        self._exit.callback(modem.stop)
        with contextlib.redirect_stderr(io.StringIO()):  # its how-to-register advice
            device = provision_quickly(
                self.workdir / "devices",
                plan.device_id,
                broker,
                settings=agent_settings(plan, link, modem.path, self.speed),
            )
        camera_plan = device.root / "camera-plan.json"
        camera_plan.write_text(plan.camera.to_json())
        self.rigs[plan.device_id] = DeviceRig(
            plan, device, link, modem, camera_plan, shape=plan.link
        )
        return device

    def server_env(self) -> dict[str, str]:
        """The plan's settings and the shared clock."""
        return {"CLASSCAM_SIM_CLOCK": str(self.clock_path), **self.plan.server_settings}

    def _start_server(
        self, broker: MosquittoBroker | RemoteBroker, devices: dict[str, Device]
    ) -> None:
        setup = json.loads(json.dumps(self.plan.setup))
        for row in setup.get("devices", []):
            row["public_key"] = devices[row["device_id"]].public_key
        setup_file = self.workdir / "setup.json"
        setup_file.write_text(json.dumps(setup, ensure_ascii=False, indent=2))
        if self.server_url:
            # Someone else's server: its API is reached by the URL and token given, its database
            # by the CLASSCAM_* environment of this shell (classcam-server import).
            url = self.server_url.rstrip("/")
            self.api_url = url if url.endswith("/api/v1") else f"{url}/api/v1"
            if not self.given_token:
                raise ValueError("--server needs an admin token (--token or CLASSCAM_SIM_TOKEN)")
            self.admin_token = self.given_token
            if self.plan.server_settings:
                log.warning(
                    "the server must run with this scenario's settings: %s",
                    " ".join(f"{k}={v}" for k, v in sorted(self.plan.server_settings.items())),
                )
            wait_for_server(self.api_url, self.admin_token, self.clock_path)
            run = subprocess.run(
                [sys.executable, "-m", "ingest_server.cli", "import", str(setup_file)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if run.returncode != 0:
                raise RuntimeError(f"classcam-server import failed:\n{run.stdout}{run.stderr}")
            return
        assert isinstance(broker, MosquittoBroker)
        server = ServerProcess(
            self.workdir / "server",
            broker,
            run_module="simulators.sim_server",
            extra_env=self.server_env(),
        )
        self.server = server
        server.cli("migrate")
        server.cli("import", str(setup_file))
        self.admin_token = server.api_token()
        server.start()
        self._exit.callback(server.stop)
        self.api_url = server.api_url

    # -- the parts at run time -------------------------------------------------------------------

    @property
    def clock(self) -> ClockConductor:
        assert self.conductor is not None
        return self.conductor

    def _agent_cli(self, rig: DeviceRig, command: str) -> subprocess.Popen[bytes]:
        log_file = (rig.device.root / "agent.log").open("ab")
        with log_file:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "simulators.sim_agent",
                    command,
                    "--config",
                    str(rig.device.config_path),
                    "--clock",
                    str(self.clock_path),
                    "--camera-plan",
                    str(rig.camera_plan),
                    "--skew-s",
                    str(rig.plan.clock_skew_s),
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def power_on(self, rig: DeviceRig) -> None:
        """Start the device: its agent process on the same state, or its forger (again, after a
        power cut: it connects in the background, as a rebooted agent does)."""
        rig.powered = True
        if rig.plan.forger is not None:
            if rig.forger is not None:
                rig.forger.power_on()
                return
            if self.start_forger is None:
                raise RuntimeError(f"{rig.plan.device_id} is planned as a forger, none given")
            rig.forger = self.start_forger(rig, self)
            return
        if rig.process is None or rig.process.poll() is not None:
            rig.process = self._agent_cli(rig, "run")

    def power_off(self, rig: DeviceRig) -> None:
        """A power cut: SIGKILL, nothing saved that was not already on disk; a forger's device
        goes as abruptly (``Forger.cut_power``)."""
        rig.powered = False
        rig.power_cuts += 1
        if rig.process is not None:
            kill_process(rig.process)
            rig.process = None
        if rig.forger is not None:
            rig.forger.cut_power()

    def link_down(self, rig: DeviceRig) -> None:
        """Coverage lost: every connection dropped, new ones refused, the modem searching."""
        rig.link.cut()
        rig.link_downs += 1
        rig.modem.registration = 2

    def link_up(self, rig: DeviceRig) -> None:
        rig.link.restore()
        rig.modem.registration = 1

    def link_shape(self, rig: DeviceRig, shape: LinkShape) -> None:
        rig.shape = shape
        rig.link.reshape(
            rate_bytes_per_s=link_rate(shape),
            latency_s=shape.latency_ms / 1000,
            loss_pct=shape.loss_pct,
        )

    def stop_devices(self) -> None:
        """Agents stopped as a shutdown stops them (SIGTERM), forgers disconnected."""
        for rig in self.rigs.values():
            if rig.process is not None:
                rig.process.send_signal(signal.SIGTERM)
        for rig in self.rigs.values():
            stop_process(rig.process, timeout=10)
            rig.process = None
            if rig.forger is not None:
                with contextlib.suppress(Exception):
                    rig.forger.stop()
                rig.forger = None

    def close(self) -> None:
        """Everything down, whatever state it is in (also on Ctrl-C)."""
        try:
            self.stop_devices()
        finally:
            self._exit.close()

    def __enter__(self) -> ReplayStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
