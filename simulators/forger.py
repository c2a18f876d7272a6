"""An adversary holding a device's key and broker password: it answers the server's cut
commands (or windows it guesses) with whatever bytes it likes, under a validly signed
manifest, over the same MQTT topics a real camera uses.

Used by the end-to-end tests of the window-proof rule: random bytes, a clip filmed on another
day, one clip for every window, another classroom's footage uploaded first under the upload
ids the session's own camera will use. Everything it sends would pass the broker's ACL and the
manifest's signature check; only the server's own look at the clip can catch it.

Given a ``Presence``, it also keeps the device looking alive as the agent does (retained
status with its will, heartbeats on its clock): an adversary would, so that the camera's
presence gives nothing away and only the clips can.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import av
import numpy as np
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import topics
from common.chunks import sha256_bytes
from common.clock import Clock, SystemClock, wait_event
from common.commands import Command, CommandType
from common.heartbeat import Heartbeat
from common.schemas import Event, EventType, Fin, Manifest, Status, StatusState, decode
from common.signing import sign_manifest
from edge_agent.heartbeat import cpu_temperature_c, disk_usage

log = logging.getLogger(__name__)

CHUNK_SIZE = 16 * 1024


@dataclass(frozen=True, slots=True)
class ForgedClip:
    """Bytes to upload and what the manifest will say about them (device-clock bounds)."""

    data: bytes
    cut_start: datetime
    cut_end: datetime
    duration_s: float
    frames: int
    width: int = 160
    height: int = 120
    clock_offset_s: float = 0.0


def encode_clip(
    path: Path, *, seconds: float, fps: int = 10, width: int = 160, height: int = 120, seed: int = 0
) -> tuple[int, float]:
    """Encode a real H.264 MP4 of a moving, noisy scene (a classroom filmed some other time):
    it decodes, its frames fit its duration, and it is neither black nor frozen. Returns the
    frame count and duration."""
    rng = np.random.default_rng(seed)
    frames = max(1, round(seconds * fps))
    base = rng.integers(40, 200, size=(height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(fps)}
        for i in range(frames):
            image = np.roll(base, shift=3 * i, axis=1)
            noise = rng.integers(-3, 4, size=image.shape)
            image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
            x = (7 * i) % (width - 20)
            image[40:60, x : x + 20] = (255, 255, 255)  # something walks across the room
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return frames, frames / fps


def real_clip(
    workdir: Path, start: datetime, seconds: float, *, seed: int = 0, fps: int = 10
) -> ForgedClip:
    """A genuine decodable clip whose manifest honestly says it was cut from ``start``."""
    path = workdir / f"clip-{uuid.uuid4().hex}.mp4"
    frames, duration = encode_clip(path, seconds=seconds, fps=fps, seed=seed)
    return ForgedClip(
        data=path.read_bytes(),
        cut_start=start,
        cut_end=start + timedelta(seconds=duration),
        duration_s=duration,
        frames=frames,
    )


@dataclass(frozen=True, slots=True)
class Presence:
    """How a forger passes for a live camera (DESIGN.md §2), as the agent does: ``online``,
    retained, on every connect, ``offline`` as its will and at a clean stop; a heartbeat every
    ``heartbeat_s`` of its clock that says it records while it claims a session
    (``Forger.claim_recording``), its spool growing by ``spool_bytes_per_s`` meanwhile, and the
    free space of the filesystem holding ``disk``."""

    heartbeat_s: float
    firmware: str
    disk: Path
    spool_bytes_per_s: float = 0.0


class Forger:
    """Connects as ``device_id`` (its username, password and client id) and signs with its key.

    ``answer``, when given, is called for every ``cut`` command the server sends this device
    and returns the clip to upload for it (``None``: stay silent); the upload id is the one
    ``upload_id_for(cmd)`` gives, and a ``cut_done`` event naming it follows, as a camera's.
    Its times come from ``clock`` and it states ``clock_offset_s`` as its clock's offset;
    with ``presence`` it also keeps the device looking alive (``Presence``). ``cut_power``
    and ``power_on`` do to it what a power cut does to a camera.
    """

    def __init__(
        self,
        device_id: str,
        password: str,
        key: Ed25519PrivateKey,
        *,
        host: str,
        port: int,
        answer: Callable[[Command], ForgedClip | None] | None = None,
        upload_id_for: Callable[[str], str] | None = None,
        client_suffix: str = "",
        clock: Clock | None = None,
        clock_offset_s: float = 0.0,
        presence: Presence | None = None,
    ) -> None:
        self.device_id = device_id
        self.key = key
        self.answer = answer
        self.clock = clock or SystemClock()
        self.clock_offset_s = clock_offset_s
        self.presence = presence
        self.upload_id_for = upload_id_for or (lambda cmd_id: uuid.uuid4().hex)
        self.commands: list[Command] = []
        self.uploads: dict[str, str] = {}  # upload id -> final ack state
        self.errors: list[str] = []
        self._host, self._port = host, port
        self._login = (device_id + client_suffix, password)
        self._acks: dict[str, queue.Queue[dict[str, Any]]] = {}
        self._answered: set[str] = set()
        self._lock = threading.Lock()
        self._work: queue.Queue[Command | None] = queue.Queue()
        self._connected = threading.Event()
        self._stopping = threading.Event()  # this power-on's end: a stop or a power cut
        self._threads: list[threading.Thread] = []
        self._started_mono = self.clock.monotonic()
        self._beat_seq = 0
        self._bytes_sent = 0
        self._recording: str | None = None  # the session it claims to record
        self._recording_since = 0.0
        self._recorded_s = 0.0
        self.client = self._new_client()

    def _new_client(self) -> mqtt.Client:
        """A fresh MQTT client, as a rebooted device has: it logs in, says ``online`` on each
        connect, and leaves ``offline`` as its will when there is a presence to keep."""
        client_id, password = self._login
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        client.username_pw_set(self.device_id, password)
        if self.presence is not None:
            will = Status(
                device_id=self.device_id, state=StatusState.OFFLINE, firmware=self.presence.firmware
            )
            client.will_set(topics.status(self.device_id), will.to_bytes(), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        return client

    # -- life --------------------------------------------------------------------------------

    @property
    def powered(self) -> bool:
        """Between ``power_on`` (or ``start``) and ``cut_power`` or ``stop``."""
        return bool(self._threads)

    def start(self, timeout: float = 10.0) -> Forger:
        """Power on and wait until connected."""
        self.power_on()
        if not self._connected.wait(timeout):
            raise TimeoutError(f"forger {self.device_id} did not connect")
        return self

    def power_on(self) -> None:
        """Boot the device (again, after ``cut_power``): a new connection in the background,
        heartbeats counted from the first again, cuts answered; a session it claimed before
        the cut is claimed still, as a rebooted agent goes on recording its class."""
        if self.powered:
            return
        mono = self.clock.monotonic()
        with self._lock:
            self._started_mono, self._beat_seq = mono, 0
            self._recording_since = mono
        self._stopping.clear()
        self._work = queue.Queue()  # what was asked before the cut died with the power
        self._threads = [
            threading.Thread(target=self._run, name=f"forger-{self.device_id}", daemon=True)
        ]
        if self.presence is not None:
            self._threads.append(
                threading.Thread(
                    target=self._heartbeats, name=f"forger-{self.device_id}-heartbeat", daemon=True
                )
            )
        self._connected.clear()
        self.client = self._new_client()  # nothing of the last power-on's connection is left
        self.client.connect_async(self._host, self._port, 30)
        self.client.loop_start()
        for thread in self._threads:
            thread.start()

    def cut_power(self) -> None:
        """The device loses power, as an agent SIGKILLed does: its connection drops without a
        word (the broker then publishes its ``offline`` will), heartbeats and answers stop at
        once, an upload under way is abandoned."""
        if not self.powered:
            return
        self._end_threads()
        sock = self.client.socket()
        if isinstance(sock, socket.socket):  # plain TCP, as the replay's links are
            # The kernel closes a killed process's sockets: the broker sees the connection go,
            # with no DISCONNECT before it (paho's own loop would send one on ``disconnect``).
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.client.loop_stop()
        with self._lock:
            if self._recording is not None:
                self._recorded_s += self.clock.monotonic() - self._recording_since

    def stop(self) -> None:
        """Stop answering and beating; with a presence, say ``offline`` as the agent does at a
        clean stop (which fires no will); disconnect. Nothing to do after ``cut_power``."""
        if not self.powered:
            return
        self._end_threads()
        if self.presence is not None and self.client.is_connected():
            info = self.client.publish(
                topics.status(self.device_id), self._status(StatusState.OFFLINE), 1, True
            )
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(2.0)
        self.client.disconnect()
        self.client.loop_stop()

    def _end_threads(self) -> None:
        self._stopping.set()
        self._work.put(None)
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []

    def claim_recording(self, session_id: str | None) -> None:
        """From now on the heartbeats say the camera records ``session_id`` (None: nothing)."""
        mono = self.clock.monotonic()
        with self._lock:
            if self._recording is not None:
                self._recorded_s += mono - self._recording_since
            self._recording, self._recording_since = session_id, mono

    def _status(self, state: StatusState) -> bytes:
        firmware = self.presence.firmware if self.presence else None
        at = self.clock.now()
        return Status(device_id=self.device_id, state=state, at=at, firmware=firmware).to_bytes()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if rc.is_failure:
            self.errors.append(f"connect refused: {rc}")
            return
        client.subscribe(topics.down_all(self.device_id), qos=1)
        if self.presence is not None:
            client.publish(topics.status(self.device_id), self._status(StatusState.ONLINE), 1, True)
        self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic == topics.ack(self.device_id):
                ack = json.loads(msg.payload)
                with self._lock:
                    waiting = self._acks.get(ack.get("upload_id", ""))
                if waiting is not None:
                    waiting.put(ack)
            elif msg.topic == topics.cmd(self.device_id):
                cmd = decode(Command, bytes(msg.payload))
                if cmd.type == CommandType.CUT:
                    self._work.put(cmd)
        except Exception as exc:  # paho's thread must survive whatever arrives
            self.errors.append(repr(exc))

    def _run(self) -> None:
        work = self._work
        while (cmd := work.get()) is not None and not self._stopping.is_set():
            self.commands.append(cmd)
            if self.answer is None or cmd.cmd_id in self._answered:
                continue
            try:
                clip = self.answer(cmd)
                if clip is None:
                    continue
                self._answered.add(cmd.cmd_id)
                upload_id = self.upload_id_for(cmd.cmd_id)
                self.upload(
                    upload_id,
                    clip,
                    cmd_id=cmd.cmd_id,
                    session_id=cmd.session_id,
                    requested=(cmd.start, cmd.end),
                )
            except Exception as exc:
                if self._stopping.is_set():  # the power went, or the stop came, mid-answer
                    continue
                log.exception("forger %s failed to answer %s", self.device_id, cmd.cmd_id)
                self.errors.append(repr(exc))

    def _heartbeats(self) -> None:
        topic = topics.heartbeat(self.device_id)
        assert self.presence is not None
        while not self._stopping.is_set():
            if self.client.is_connected():
                try:
                    self.client.publish(topic, self.heartbeat().to_bytes(), qos=1)
                except Exception as exc:  # one bad beat must not end the device's presence
                    self.errors.append(repr(exc))
            wait_event(self._stopping, self.presence.heartbeat_s, self.clock)

    def _wait_published(self, info: mqtt.MQTTMessageInfo, timeout: float) -> None:
        """Wait until paho has sent ``info``'s message, or give up when this power-on ends
        (a cut leaves it unsent for good) or ``timeout`` real seconds pass."""
        deadline = time.monotonic() + timeout
        while not info.is_published() and not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            info.wait_for_publish(min(left, 0.2))

    # -- what a camera sends -----------------------------------------------------------------

    def heartbeat(self) -> Heartbeat:
        """The heartbeat the agent would send now, as far as the forger can pretend it:
        recording the session it claims, its spool grown by as much, nothing waiting to go."""
        presence = self.presence
        assert presence is not None
        now, mono = self.clock.now(), self.clock.monotonic()
        free, total = disk_usage(presence.disk)
        with self._lock:
            self._beat_seq += 1
            seq, session_id, recorded_s = self._beat_seq, self._recording, self._recorded_s
            if session_id is not None:
                recorded_s += mono - self._recording_since
            sent = self._bytes_sent
        return Heartbeat(
            device_id=self.device_id,
            at=now,
            seq=seq,
            uptime_s=max(0.0, mono - self._started_mono),
            firmware=presence.firmware,
            recording=session_id is not None,
            session_id=session_id,
            spool_bytes=int(recorded_s * presence.spool_bytes_per_s),
            outbox_pending=0,
            disk_free_bytes=free,
            disk_total_bytes=total,
            cpu_temp_c=cpu_temperature_c(),
            clock_offset_s=self.clock_offset_s,
            clock_source="server",
            clock_synced=True,
            bytes_sent_today=sent,
            bytes_sent_month=sent,
        )

    def emit(
        self,
        type_: EventType,
        *,
        session_id: str | None = None,
        cmd_id: str | None = None,
        data: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> None:
        """Publish an event as the device would: ``at`` (default now) on the forger's clock,
        with the offset it states."""
        event = Event(
            event_id=uuid.uuid4().hex,
            device_id=self.device_id,
            type=type_,
            at=at or self.clock.now(),
            clock_offset_s=self.clock_offset_s,
            session_id=session_id,
            cmd_id=cmd_id,
            data=data or {},
        )
        info = self.client.publish(topics.event(self.device_id), event.to_bytes(), qos=1)
        info.wait_for_publish(10)

    def upload(
        self,
        upload_id: str,
        clip: ForgedClip,
        *,
        cmd_id: str | None,
        session_id: str | None,
        requested: tuple[datetime | None, datetime | None] = (None, None),
        timeout: float = 30.0,
    ) -> str:
        """Sign a manifest for ``clip``, send it with every chunk and ``fin``, announce the cut,
        and return the server's final word (``complete`` or ``rejected``)."""
        data = clip.data
        chunks = [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]
        manifest = Manifest(
            upload_id=upload_id,
            device_id=self.device_id,
            session_id=session_id,
            cmd_id=cmd_id,
            requested_start=requested[0],
            requested_end=requested[1],
            cut_start=clip.cut_start,
            cut_end=clip.cut_end,
            clock_offset_s=clip.clock_offset_s,
            size=len(data),
            sha256=sha256_bytes(data),
            chunk_size=CHUNK_SIZE,
            chunk_sha256=[sha256_bytes(c) for c in chunks],
            duration_s=clip.duration_s,
            frames=clip.frames,
            width=clip.width,
            height=clip.height,
            created_at=self.clock.now(),
        )
        acks: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._acks[upload_id] = acks
        publish = self.client.publish
        publish(topics.file_init(self.device_id, upload_id), sign_manifest(manifest, self.key), 1)
        infos = [
            publish(topics.file_chunk(self.device_id, upload_id, i * CHUNK_SIZE), chunk, 1)
            for i, chunk in enumerate(chunks)
        ]
        for info in infos:
            self._wait_published(info, timeout)
        with self._lock:
            self._bytes_sent += len(data)
        fin = Fin(upload_id=upload_id, size=len(data), sha256=manifest.sha256)
        publish(topics.file_fin(self.device_id, upload_id), fin.to_bytes(), 1)
        state = "timeout"
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while not deadline.is_set() and not self._stopping.is_set():
                try:
                    ack = acks.get(timeout=0.2)
                except queue.Empty:
                    continue
                if ack.get("state") == "rejected" or (
                    ack.get("state") == "complete" and ack.get("reply_to") in ("fin", "init")
                ):
                    state = str(ack["state"])
                    break
        finally:
            timer.cancel()
        if self._stopping.is_set() and state == "timeout":
            state = "abandoned"  # the device stopped or lost its power before an answer
        self.uploads[upload_id] = state
        if state == "complete" and cmd_id:
            self.emit(
                EventType.CUT_DONE,
                session_id=session_id,
                cmd_id=cmd_id,
                data={"upload_id": upload_id, "size": len(data), "sha256": manifest.sha256},
            )
        return state
