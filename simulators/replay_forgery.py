"""A device in an adversary's hands during a replay (``ForgerPlan``): ``simulators.forger``
connects with the device's credentials through the device's own link, reports its sessions as
a camera would, and answers each cut with a forged, validly signed clip.

- ``another_day``: a genuine recording whose manifest honestly says it was cut a day earlier;
- ``another_classroom``: the very window cut from the other device's spool by the agent's own
  cutter, signed with this device's key.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from common.commands import Command
from common.schemas import EventType
from common.signing import load_private_key
from edge_agent.clips import upload_id_for
from edge_agent.cutter import cut_window
from edge_agent.sessions import stopped_report
from edge_agent.spool import Spool
from simulators.forger import ForgedClip, Forger, real_clip
from simulators.plan import SessionPlan

if TYPE_CHECKING:
    from simulators.replay_stack import DeviceRig, ReplayStack


def start_forger(rig: DeviceRig, stack: ReplayStack) -> Forger:
    """The forger for ``rig``, connected through its link."""
    plan = rig.plan.forger
    assert plan is not None
    workdir = rig.device.root / "forgeries"
    workdir.mkdir(exist_ok=True)

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
            cut = cut_window(spool, cmd.start, cmd.end, out)
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
    )
    return forger.start(timeout=30)


def report_session(forger: Forger, session: SessionPlan, *, started: bool, at: datetime) -> None:
    """What a camera says when a session starts or stops: the forger says it too, on time."""
    if started:
        data = {"source": "timetable", "opened_at": at.isoformat(), "planned_end": None}
        forger.emit(EventType.SESSION_STARTED, session_id=session.session_id, data=data, at=at)
        return
    data = stopped_report(
        reason="planned_end",
        opened_at=session.start,
        closed_at=at,
        gaps=[],
        recording_ids=[1],
    )
    forger.emit(EventType.SESSION_STOPPED, session_id=session.session_id, data=data, at=at)
