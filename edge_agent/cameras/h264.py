"""Just enough H.264 Annex B parsing to stream-copy: NAL units, parameter sets, IDR frames.

Annex B is what cameras and encoders hand over (start codes ``00 00 01`` between NAL units);
MP4 files hold the same NAL units length-prefixed. Emulation prevention guarantees that a start
code never occurs inside a NAL unit, so splitting on it is exact.
"""

from __future__ import annotations

import re

START_CODE = b"\x00\x00\x00\x01"
NAL_IDR, NAL_SPS, NAL_PPS = 5, 7, 8
_START = re.compile(b"\x00\x00\x01")


def nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte string, without start codes or trailing zero bytes."""
    starts = [m.end() for m in _START.finditer(data)]
    units = []
    for i, begin in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(data)
        # A NAL unit never ends in a zero byte (rbsp_stop_one_bit): zeros there belong to the
        # next 4-byte start code or are trailing_zero_8bits.
        unit = data[begin:end].rstrip(b"\x00")
        if unit:
            units.append(unit)
    return units


def parameter_sets(data: bytes) -> bytes:
    """The SPS and PPS carried in ``data`` as Annex B extradata, or b"" if it lacks either."""
    sps: bytes | None = None
    pps: list[bytes] = []
    for unit in nal_units(data):
        kind = unit[0] & 0x1F
        if kind == NAL_SPS and sps is None:
            sps = unit
        elif kind == NAL_PPS and unit not in pps:
            pps.append(unit)
    if sps is None or not pps:
        return b""
    return b"".join(START_CODE + unit for unit in (sps, *pps))


def is_idr(data: bytes) -> bool:
    """Whether ``data`` holds an IDR slice, the only frame a segment may start with."""
    return any(unit[0] & 0x1F == NAL_IDR for unit in nal_units(data))
