"""Small database operations the CLI (and later the API) share."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.clock import Clock, SystemClock
from common.signing import load_public_key_b64
from common.topics import validate_id
from ingest_server.models import Clip, Device, RejectionCount


class DeviceExists(ValueError):
    """Registering a device id that already has a different key, without ``replace``."""


class ClassroomHasCamera(ValueError):
    """Installing a camera in a classroom whose enabled camera is another one."""


def check_one_camera(session: Session, device_id: str, classroom_id: str | None) -> None:
    """A classroom has one enabled camera: which one films a class must never be a guess.
    Raise ``ClassroomHasCamera`` naming the other (disable it first to replace it)."""
    if classroom_id is None:
        return
    other = session.scalar(
        select(Device.device_id).where(
            Device.classroom_id == classroom_id,
            Device.enabled.is_(True),
            Device.device_id != device_id,
        )
    )
    if other is not None:
        raise ClassroomHasCamera(
            f"classroom {classroom_id} already has camera {other}; disable it first"
        )


def register_device(
    session: Session,
    device_id: str,
    public_key_b64: str,
    classroom_id: str | None = None,
    replace: bool = False,
    clock: Clock | None = None,
) -> Device:
    """Add a device (or, with ``replace``, change its key); the caller commits.

    The key is the raw 32-byte Ed25519 public key in base64, as ``common.signing`` prints it.
    Re-registering the same key is a no-op, so provisioning scripts can be re-run.
    """
    validate_id(device_id, "device id")
    load_public_key_b64(public_key_b64)  # refuse anything that is not a usable key
    check_one_camera(session, device_id, classroom_id)
    device = session.get(Device, device_id)
    if device is None:
        device = Device(
            device_id=device_id,
            public_key=public_key_b64,
            classroom_id=classroom_id,
            enabled=True,
            created_at=(clock or SystemClock()).now(),
        )
        session.add(device)
        return device
    if device.public_key != public_key_b64 and not replace:
        raise DeviceExists(f"device {device_id} is registered with another key")
    device.public_key = public_key_b64
    device.enabled = True
    if classroom_id is not None and classroom_id != device.classroom_id:
        # A move: the clips it took before are not its new classroom's (evidence.scope).
        device.classroom_since = (clock or SystemClock()).now()
        device.classroom_id = classroom_id
    return device


def list_clips(session: Session, device_id: str | None = None, limit: int = 100) -> Sequence[Clip]:
    """The most recently stored clips, newest first."""
    query = select(Clip).order_by(Clip.stored_at.desc(), Clip.id.desc()).limit(limit)
    if device_id:
        query = query.where(Clip.device_id == device_id)
    return session.scalars(query).all()


def rejection_counts(session: Session) -> dict[str, int]:
    """How many messages were refused for each reason, ever (exact counters; the
    ``rejections`` table keeps only a sample)."""
    rows = session.execute(
        select(RejectionCount.reason, func.sum(RejectionCount.count)).group_by(
            RejectionCount.reason
        )
    )
    return {reason: int(count) for reason, count in rows}
