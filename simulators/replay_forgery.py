"""A device in an adversary's hands during a replay (``ForgerPlan``): ``simulators.forger``
connects with the device's credentials through the device's own link, keeps it looking alive
as the agent would (status, heartbeats at the agent's period on the replay's clock, recording
during its classes), reports its sessions as a camera would, and answers each cut with a
forged, validly signed clip.

- ``another_day``: a genuine recording whose manifest honestly says it was cut a day earlier;
- ``another_classroom``: the window, a few seconds wider on each side (``COPY_PAD``), cut from
  the other device's spool by the agent's own cutter, signed with this device's key. Wider, as
  a copier would leave a margin: so its bytes are never the very clip the other camera gives
  for a window of its own drawn within the same second (``clip_duplicate`` there would flag
  the honest camera's clip, whichever of the two arrived second).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from common.commands import Command
from common.schemas import EventType
from common.signing import load_private_key
from edge_agent.clips import upload_id_for
from edge_agent.config import load_config
from edge_agent.cutter import cut_window
from edge_agent.service import FIRMWARE
from edge_agent.sessions import stopped_report
from edge_agent.spool import Spool
from simulators.forger import ForgedClip, Forger, Presence, real_clip
from simulators.plan import SessionPlan
from simulators.sim_clock import SharedClock

if TYPE_CHECKING:
    from simulators.replay_stack import DeviceRig, ReplayStack

# The margin a copier leaves on each side of the window it cuts from another camera's spool:
# more than a keyframe interval (1 s), so that the copy is always longer than any window's cut.
COPY_PAD = timedelta(seconds=3)


def start_forger(rig: DeviceRig, stack: ReplayStack) -> Forger:
    """The forger for ``rig``, connected through its link, on the replay's clock (with the
    device's skew, which it states as the agent would once it has measured it)."""
    plan = rig.plan.forger
    assert plan is not None
    workdir = rig.device.root / "forgeries"
    workdir.mkdir(exist_ok=True)
    config = load_config(rig.device.config_path)  # the agent's own: its period, its bitrate
    presence = Presence(
        heartbeat_s=config.heartbeat.interval_s,
        firmware=FIRMWARE,
        disk=rig.device.state_dir,
        spool_bytes_per_s=config.recording.bitrate / 8,
    )

    def answer(cmd: Command) -> ForgedClip | None:
        if cmd.start is None or cmd.end is None:
            return None
        seconds = (cmd.end - cmd.start).total_seconds()
        if plan.source == "another_day":
            return real_clip(workdir, cmd.start - timedelta(days=1), seconds, seed=7)
        other = stack.rigs[plan.other_device or ""]
        spool = Spool(other.device.state_dir / "spool", read_only=True)
        try:
            out = workdir / f"{uuid.uuid4().hex}.mp4"
            cut = cut_window(spool, cmd.start - COPY_PAD, cmd.end + COPY_PAD, out)
        finally:
            spool.close()
        return ForgedClip(
            data=out.read_bytes(),
            cut_start=cut.cut_start,
            cut_end=cut.cut_end,
            duration_s=cut.duration_s,
            frames=cut.frames,
            width=cut.width,
            height=cut.height,
            clock_offset_s=cut.clock_offset_s,
        )

    forger = Forger(
        rig.device_id,
        (rig.device.root / "broker-password").read_text().strip(),
        load_private_key(rig.device.root / "device-key.pem"),
        host=rig.link.host,
        port=rig.link.port,
        answer=answer,
        upload_id_for=lambda cmd_id: upload_id_for(rig.device_id, cmd_id),
        clock=SharedClock(stack.clock_path, skew_s=rig.plan.clock_skew_s),
        clock_offset_s=rig.plan.clock_skew_s,
        presence=presence,
    )
    return forger.start(timeout=30)


def report_session(forger: Forger, session: SessionPlan, *, started: bool, at: datetime) -> None:
    """What a camera says when a session starts or stops, and from then on in its heartbeats
    (recording or not): the forger says it too, on time (``at``, true time, stated in its
    device clock)."""
    skew = timedelta(seconds=forger.clock_offset_s)
    if started:
        data = {"source": "timetable", "opened_at": (at + skew).isoformat(), "planned_end": None}
        forger.emit(
            EventType.SESSION_STARTED, session_id=session.session_id, data=data, at=at + skew
        )
        forger.claim_recording(session.session_id)
        return
    forger.claim_recording(None)
    data = stopped_report(
        reason="planned_end",
        opened_at=session.start + skew,
        closed_at=at + skew,
        gaps=[],
        recording_ids=[1],
    )
    forger.emit(EventType.SESSION_STOPPED, session_id=session.session_id, data=data, at=at + skew)
