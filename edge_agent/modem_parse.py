"""Pure parsers for AT command replies of 4G IoT modems (Quectel EC2x/EG25, SIMCom SIM7600).

Everything here works on decoded text lines and returns typed values; nothing touches a port,
so every reply format is table-tested without a modem (tests/edge_agent/test_modem_parse.py).
The driver that talks to the port is ``edge_agent.modem``.

Formats follow 3GPP TS 27.007 where the modules do, and the vendors' AT manuals where they
don't (``AT+QENG``, ``AT+QGPSLOC``, ``AT+QLTS``, ``AT+CPSI``, ``AT+CGPSINFO``).
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict

ModemFamily = Literal["quectel", "simcom", "generic"]


class ParseError(ValueError):
    """A reply line that does not have the shape its command promises."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModemModel(_Frozen):
    """Who made the module and which firmware it runs; ``family`` picks the vendor commands."""

    family: ModemFamily
    manufacturer: str | None = None
    model: str | None = None
    revision: str | None = None


class SignalInfo(_Frozen):
    """Radio quality: 27.007 ``+CSQ`` always, LTE measurements where the module reports them."""

    csq: int | None  # the raw 0..31 index; None when the module says 99 (not known)
    rssi_dbm: int | None
    ber: int | None  # RXQUAL 0..7; None when not known (always so on LTE)
    rat: str | None = None  # radio access technology of the serving cell, e.g. "LTE"
    rsrp_dbm: float | None = None
    rsrq_db: float | None = None
    sinr_db: float | None = None
    band: str | None = None
    cell_id: str | None = None


class RegStatus(StrEnum):
    NOT_REGISTERED = "not_registered"
    HOME = "home"
    SEARCHING = "searching"
    DENIED = "denied"
    UNKNOWN = "unknown"
    ROAMING = "roaming"
    EMERGENCY = "emergency"


# 27.007 <stat>: 6/7 are "SMS only" and 9/10 "CSFB not preferred" variants of home/roaming;
# for a data device they mean the same as 1/5.
_STAT = {
    0: RegStatus.NOT_REGISTERED,
    1: RegStatus.HOME,
    2: RegStatus.SEARCHING,
    3: RegStatus.DENIED,
    4: RegStatus.UNKNOWN,
    5: RegStatus.ROAMING,
    6: RegStatus.HOME,
    7: RegStatus.ROAMING,
    8: RegStatus.EMERGENCY,
    9: RegStatus.HOME,
    10: RegStatus.ROAMING,
}


class RegState(_Frozen):
    """One registration report (``+CREG`` for circuit-switched, ``+CEREG`` for EPS/LTE)."""

    stat: int
    status: RegStatus
    area: str | None = None  # LAC (CREG) or TAC (CEREG), hex as the module prints it
    cell_id: str | None = None
    act: int | None = None


class Registration(_Frozen):
    """Both registration domains and the verdict a data device cares about."""

    status: RegStatus
    registered: bool
    roaming: bool
    cs: RegState | None = None
    eps: RegState | None = None


# 27.007 <AcT> (SIMCom adds nothing we need beyond these).
ACCESS_TECHNOLOGY = {
    0: "GSM",
    1: "GSM Compact",
    2: "UTRAN",
    3: "GSM EGPRS",
    4: "UTRAN HSDPA",
    5: "UTRAN HSUPA",
    6: "UTRAN HSPA",
    7: "LTE",
    8: "EC-GSM-IoT",
    9: "NB-IoT",
    10: "E-UTRA 5GCN",
    11: "NR 5GCN",
    12: "NG-RAN",
    13: "E-UTRA-NR",
}


class OperatorInfo(_Frozen):
    """The network the module is on (``+COPS?``); ``name`` is None when not registered."""

    mode: int
    name: str | None = None
    name_format: Literal["long", "short", "numeric"] | None = None
    act: int | None = None
    technology: str | None = None


class GnssFix(_Frozen):
    """A position fix. Modules report WGS-84; the datum is stated because in China it matters."""

    latitude: float
    longitude: float
    datum: Literal["wgs84"] = "wgs84"
    altitude_m: float | None = None
    utc: datetime | None = None
    hdop: float | None = None
    satellites: int | None = None
    speed_kmh: float | None = None
    course_deg: float | None = None


# ---------------------------------------------------------------------------------------------
# Line classification: what the driver needs to tell replies from unsolicited result codes.

_FINAL_ERROR = re.compile(r"^(ERROR|\+CM[ES] ERROR:.*)$")

# Bare-word URCs seen from EC2x/EG25 and SIM7600 (boot, power, calls, phonebook/SMS ready).
_BARE_URCS = frozenset(
    {
        "RDY",
        "RING",
        "NO CARRIER",
        "START",
        "SMS DONE",
        "PB DONE",
        "SMS Ready",
        "Call Ready",
        "POWERED DOWN",
        "NORMAL POWER DOWN",
        "UNDER-VOLTAGE POWER DOWN",
        "UNDER-VOLTAGE WARNING",
        "OVER-VOLTAGE POWER DOWN",
        "OVER-VOLTAGE WARNING",
    }
)

# Commands whose information lines carry another name than the command's own.
_REPLY_PREFIXES = {
    "+CICCID": ("+ICCID:",),
    "+CCID": ("+CCID:", "+ICCID:"),
    "I": ("+GCAP:",),  # SIMCom's ATI ends with a +GCAP line
}

_COMMAND_NAME = re.compile(r"^AT([+$%^#][A-Z0-9]+|[A-Z&]\d*)", re.IGNORECASE)


def final_result(line: str) -> Literal["ok", "error"] | None:
    """``"ok"``/``"error"`` if ``line`` ends a command's reply (verbose result codes), else None."""
    if line == "OK":
        return "ok"
    if _FINAL_ERROR.match(line):
        return "error"
    return None


def cme_error(line: str) -> int | None:
    """The numeric code of a ``+CME ERROR: n`` / ``+CMS ERROR: n`` line, else None."""
    match = re.match(r"^\+CM[ES] ERROR:\s*(\d+)\s*$", line)
    return int(match.group(1)) if match else None


def reply_prefixes(command: str) -> tuple[str, ...]:
    """The ``+NAME:`` prefixes an answer to ``command`` may carry (empty for a set command
    whose only answer is the result code, such as ``AT+CFUN=1``)."""
    match = _COMMAND_NAME.match(command.strip())
    if not match:
        return ()
    name = match.group(1).upper()
    if name in _REPLY_PREFIXES:
        return _REPLY_PREFIXES[name]
    if not name.startswith("+"):
        return ()
    # A module echoes "+CFUN: 1" as a URC after a reset; a CFUN write has no information line.
    if name == "+CFUN" and "=" in command and "?" not in command:
        return ()
    return (name + ":",)


_REG_PREFIXES = ("+CREG:", "+CGREG:", "+CEREG:", "+C5GREG:")


def is_unsolicited(line: str, command: str | None) -> bool:
    """True when ``line`` is an unsolicited result code rather than part of the reply to
    ``command`` (None: no command is waiting, so every line is unsolicited).

    The registration reports are the subtle case: ``+CREG: 1`` or ``+CREG: 1,"5A1B",...`` is a
    URC (``<stat>[,<lac>...]``, the second field quoted), while the answer to ``AT+CREG?`` is
    ``+CREG: <n>,<stat>[,...]`` with two bare integers first.
    """
    if command is None:
        return True
    if line in _BARE_URCS:
        return True
    if not line.startswith("+") or ":" not in line:
        return False  # bare information text (IMEI, ATI lines) belongs to the reply
    prefix = line[: line.index(":") + 1]
    if prefix not in reply_prefixes(command):
        return True
    if prefix in _REG_PREFIXES:
        fields = split_fields(line[len(prefix) :], keep_quotes=True)
        return not (len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit())
    return False


# ---------------------------------------------------------------------------------------------
# Bytes to lines, and retry pacing

# Bytes that never occur in AT traffic: C0 controls but CR/LF/TAB, DEL, and bytes that are
# invalid anywhere in UTF-8.
NOISE_BYTES = frozenset([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F, 0xC0, 0xC1])
NOISE_BYTES |= frozenset(range(0xF5, 0x100))


def decode_line(raw: bytes) -> str | None:
    """The line as text, or None if it is noise."""
    if any(b in NOISE_BYTES for b in raw):
        return None
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None


def take_lines(buffer: bytearray) -> list[bytes]:
    """Remove and return the complete lines in ``buffer`` (CR, LF or both end a line: an
    echoed command ends in CR alone)."""
    end = max(buffer.rfind(b"\r"), buffer.rfind(b"\n"))
    if end < 0:
        return []
    complete = bytes(buffer[: end + 1])
    del buffer[: end + 1]
    return [line for line in complete.replace(b"\r", b"\n").split(b"\n") if line.strip()]


def backoff_delay(
    attempt: int, initial: float, cap: float, rng: random.Random, jitter: float = 0.2
) -> float:
    """Capped exponential backoff with ±``jitter`` spread, so a fleet rebooting together does
    not retry in lockstep."""
    base = min(cap, initial * 2.0**attempt)
    return min(cap, base * rng.uniform(1 - jitter, 1 + jitter))


# ---------------------------------------------------------------------------------------------
# Field helpers


def split_fields(payload: str, *, keep_quotes: bool = False) -> list[str]:
    """Comma-separated AT fields, honouring double quotes; whitespace around fields dropped."""
    fields: list[str] = []
    current: list[str] = []
    quoted = False
    for char in payload:
        if char == '"':
            quoted = not quoted
            if keep_quotes:
                current.append(char)
        elif char == "," and not quoted:
            fields.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    fields.append("".join(current).strip())
    return fields


def info_payload(lines: list[str], prefix: str) -> str:
    """The text after ``prefix`` in the first line that starts with it."""
    for line in lines:
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    raise ParseError(f"no {prefix} line in {lines!r}")


def _field(fields: list[str], index: int) -> str | None:
    """Field ``index`` if present and non-empty (optional trailing fields may be omitted)."""
    return fields[index] or None if index < len(fields) else None


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# Signal


def csq_to_dbm(rssi: int) -> int | None:
    """27.007 ``<rssi>`` index to dBm: 0 → -113 (or less), 31 → -51 (or more), 99 → None."""
    if 0 <= rssi <= 31:
        return -113 + 2 * rssi
    return None


def parse_csq(payload: str) -> SignalInfo:
    """``+CSQ: <rssi>,<ber>`` (payload after the prefix)."""
    fields = split_fields(payload)
    if len(fields) < 2 or not all(f.isdigit() for f in fields[:2]):
        raise ParseError(f"bad +CSQ payload {payload!r}")
    rssi, ber = int(fields[0]), int(fields[1])
    dbm = csq_to_dbm(rssi)
    return SignalInfo(
        csq=rssi if dbm is not None else None,
        rssi_dbm=dbm,
        ber=ber if 0 <= ber <= 7 else None,
    )


def parse_qeng_servingcell(payload: str) -> dict[str, object]:
    """Quectel ``+QENG: "servingcell",<state>,"LTE",<is_tdd>,<mcc>,<mnc>,<cellid>,<pcid>,
    <earfcn>,<band>,<ul_bw>,<dl_bw>,<tac>,<rsrp>,<rsrq>,<rssi>,<sinr>,<srxlev>...`` as the
    extra SignalInfo fields; ``{}`` for ``"SEARCH"``/``"LIMSRV"`` without a cell.

    SINR: the EC2x manual describes a 0..250 scale in 1/5 dB, but shipping firmware prints dB
    (negative values appear in the field), so the number is taken as dB.
    """
    fields = split_fields(payload)
    if not fields or fields[0] != "servingcell":
        raise ParseError(f"not a servingcell report: {payload!r}")
    if len(fields) < 3:
        return {}  # "SEARCH": no serving cell yet
    rat = fields[2]
    if rat != "LTE":
        return {"rat": rat}
    if len(fields) < 17:
        raise ParseError(f"short LTE servingcell report: {payload!r}")
    rsrp, rsrq, sinr = (_int_or_none(fields[i]) for i in (13, 14, 16))
    return {
        "rat": "LTE",
        "cell_id": fields[6] or None,
        "band": f"B{fields[9]}" if fields[9].isdigit() else None,
        "rsrp_dbm": float(rsrp) if rsrp is not None and rsrp > -200 else None,
        "rsrq_db": float(rsrq) if rsrq is not None and rsrq > -100 else None,
        "sinr_db": float(sinr) if sinr is not None and sinr > -100 else None,
    }


def parse_cpsi(payload: str) -> dict[str, object]:
    """SIMCom ``+CPSI: LTE,Online,<mcc>-<mnc>,<tac>,<cellid>,<pcid>,EUTRAN-BAND<n>,<earfcn>,
    <dlbw>,<ulbw>,<rsrq>,<rsrp>,<rssi>,<rssnr>`` as the extra SignalInfo fields.

    RSRQ, RSRP and RSSI come in tenths (``-1126`` is -112.6 dBm); RSSNR in dB.
    ``NO SERVICE`` gives ``{}``.
    """
    fields = split_fields(payload)
    if not fields or not fields[0]:
        raise ParseError(f"bad +CPSI payload {payload!r}")
    rat = fields[0]
    if rat == "NO SERVICE":
        return {}
    if rat != "LTE" or len(fields) < 14:
        return {"rat": rat}
    rsrq, rsrp, rssnr = (_int_or_none(fields[i]) for i in (10, 11, 13))
    band = fields[6].removeprefix("EUTRAN-BAND")
    return {
        "rat": "LTE",
        "cell_id": fields[4] or None,
        "band": f"B{band}" if band.isdigit() else None,
        "rsrq_db": rsrq / 10 if rsrq is not None else None,
        "rsrp_dbm": rsrp / 10 if rsrp is not None else None,
        "sinr_db": float(rssnr) if rssnr is not None else None,
    }


# ---------------------------------------------------------------------------------------------
# Registration and operator


def parse_reg(payload: str) -> RegState:
    """The answer to ``AT+CREG?``/``AT+CEREG?``: ``<n>,<stat>[,<lac|tac>,<ci>[,<AcT>]]``."""
    fields = split_fields(payload)
    if len(fields) < 2 or not fields[0].isdigit() or not fields[1].isdigit():
        raise ParseError(f"not a registration reply: {payload!r}")
    stat = int(fields[1])
    return RegState(
        stat=stat,
        status=_STAT.get(stat, RegStatus.UNKNOWN),
        area=_field(fields, 2),
        cell_id=_field(fields, 3),
        act=_int_or_none(_field(fields, 4) or ""),
    )


def combine_registration(cs: RegState | None, eps: RegState | None) -> Registration:
    """One verdict from both domains: an LTE-only module may be attached on EPS while CREG
    still says 0, so either domain being registered counts; otherwise EPS speaks first."""
    states = [s for s in (eps, cs) if s is not None]
    if not states:
        raise ParseError("no registration report")
    statuses = [s.status for s in states]
    if RegStatus.HOME in statuses:
        status = RegStatus.HOME
    elif RegStatus.ROAMING in statuses:
        status = RegStatus.ROAMING
    else:
        status = statuses[0]
    return Registration(
        status=status,
        registered=status in (RegStatus.HOME, RegStatus.ROAMING),
        roaming=status is RegStatus.ROAMING,
        cs=cs,
        eps=eps,
    )


_COPS_FORMATS: dict[int, Literal["long", "short", "numeric"]] = {
    0: "long",
    1: "short",
    2: "numeric",
}


def parse_cops(payload: str) -> OperatorInfo:
    """``+COPS: <mode>[,<format>,<oper>[,<AcT>]]``; just ``<mode>`` when not registered."""
    fields = split_fields(payload)
    if not fields[0].isdigit():
        raise ParseError(f"bad +COPS payload {payload!r}")
    mode = int(fields[0])
    if len(fields) < 3 or not fields[2]:
        return OperatorInfo(mode=mode)
    act = _int_or_none(fields[3]) if len(fields) > 3 else None
    fmt = _int_or_none(fields[1])
    return OperatorInfo(
        mode=mode,
        name=fields[2],
        name_format=_COPS_FORMATS.get(fmt) if fmt is not None else None,
        act=act,
        technology=ACCESS_TECHNOLOGY.get(act) if act is not None else None,
    )


# ---------------------------------------------------------------------------------------------
# Identity


def parse_model(lines: list[str]) -> ModemModel:
    """``ATI`` (or ``AT+CGMI`` + ``AT+CGMM`` lines) to a model and its command family.

    Quectel prints ``Quectel`` / ``EC25`` / ``Revision: ...``; SIMCom prints
    ``Manufacturer: SIMCOM INCORPORATED`` / ``Model: SIMCOM_SIM7600G-H`` / ``Revision: ...``.
    """
    manufacturer = model = revision = None
    bare: list[str] = []
    for line in lines:
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key == "manufacturer":
            manufacturer = value.strip()
        elif sep and key == "model":
            model = value.strip()
        elif sep and key == "revision":
            revision = value.strip()
        elif not sep:
            bare.append(line.strip())
    if manufacturer is None and bare:
        manufacturer = bare.pop(0)
    if model is None and bare:
        model = bare.pop(0)
    text = f"{manufacturer or ''} {model or ''}".lower()
    family: ModemFamily
    if "quectel" in text:
        family = "quectel"
    elif "simcom" in text or "sim7" in text:
        family = "simcom"
    else:
        family = "generic"
    return ModemModel(family=family, manufacturer=manufacturer, model=model, revision=revision)


def parse_iccid(lines: list[str]) -> str:
    """The SIM's ICCID from ``+QCCID:``/``+ICCID:``/``+CCID:`` or a bare line; a trailing ``F``
    (padding of a 19-digit ICCID) is dropped."""
    for line in lines:
        value = line.split(":", 1)[1] if ":" in line else line
        value = value.strip().strip('"').upper().rstrip("F")
        if re.fullmatch(r"89\d{16,18}", value):
            return value
    raise ParseError(f"no ICCID in {lines!r}")


def parse_imei(lines: list[str]) -> str:
    """A 15-digit IMEI from ``AT+CGSN``/``AT+GSN`` (bare, or ``+CGSN: "..."`` on some firmware)."""
    for line in lines:
        value = line.split(":", 1)[1] if ":" in line else line
        value = value.strip().strip('"')
        if re.fullmatch(r"\d{15}", value):
            return value
    raise ParseError(f"no IMEI in {lines!r}")


# ---------------------------------------------------------------------------------------------
# Time


def _local_to_utc(local: datetime, quarters: int) -> datetime:
    return (local - timedelta(minutes=15 * quarters)).replace(tzinfo=UTC)


# A module that never heard network time reports its power-on default (1980-01-06 on Quectel,
# 2004-01-01 on SIMCom); such a time is not a time.
_EARLIEST_REAL = datetime(2020, 1, 1, tzinfo=UTC)


def parse_cclk(payload: str) -> datetime | None:
    """``+CCLK: "yy/MM/dd,hh:mm:ss±zz"`` (local time, zz in quarter-hours) as aware UTC;
    None for a clock the network never set."""
    match = re.fullmatch(r'"?(\d\d)/(\d\d)/(\d\d),(\d\d):(\d\d):(\d\d)([+-]\d{1,2})?"?', payload)
    if not match:
        raise ParseError(f"bad +CCLK payload {payload!r}")
    yy, mo, dd, hh, mi, ss = (int(g) for g in match.groups()[:6])
    quarters = int(match.group(7) or 0)
    # Two-digit years: 80..99 are the 1980 GPS-epoch default, not 2080.
    year = 1900 + yy if yy >= 80 else 2000 + yy
    try:
        value = _local_to_utc(datetime(year, mo, dd, hh, mi, ss), quarters)
    except ValueError as exc:
        raise ParseError(f"impossible +CCLK time {payload!r}") from exc
    return value if value >= _EARLIEST_REAL else None


def parse_qlts(payload: str) -> datetime | None:
    """Quectel ``+QLTS: "yyyy/MM/dd,hh:mm:ss±zz,dst"`` from ``AT+QLTS=2`` (local time) as aware
    UTC; ``""`` (never synchronised) gives None."""
    text = payload.strip().strip('"')
    if not text:
        return None
    match = re.fullmatch(r"(\d{4})/(\d\d)/(\d\d),(\d\d):(\d\d):(\d\d)([+-]\d{1,2})(,\d+)?", text)
    if not match:
        raise ParseError(f"bad +QLTS payload {payload!r}")
    yyyy, mo, dd, hh, mi, ss = (int(g) for g in match.groups()[:6])
    try:
        value = _local_to_utc(datetime(yyyy, mo, dd, hh, mi, ss), int(match.group(7)))
    except ValueError as exc:
        raise ParseError(f"impossible +QLTS time {payload!r}") from exc
    return value if value >= _EARLIEST_REAL else None


# ---------------------------------------------------------------------------------------------
# GNSS


def _gnss_utc(ddmmyy: str, hhmmss: str) -> datetime | None:
    if not (re.fullmatch(r"\d{6}", ddmmyy) and re.fullmatch(r"\d{6}(\.\d+)?", hhmmss)):
        return None
    seconds = float(hhmmss[4:])
    try:
        base = datetime(
            2000 + int(ddmmyy[4:6]),
            int(ddmmyy[2:4]),
            int(ddmmyy[0:2]),
            int(hhmmss[0:2]),
            int(hhmmss[2:4]),
            tzinfo=UTC,
        )
    except ValueError:
        return None
    return base + timedelta(seconds=seconds)


def parse_qgpsloc(payload: str) -> GnssFix:
    """Quectel ``AT+QGPSLOC=2``: ``<UTC hhmmss.sss>,<lat>,<lon>,<hdop>,<alt>,<fix>,<cog>,
    <spkm>,<spkn>,<date ddmmyy>,<nsat>`` with signed decimal degrees."""
    fields = split_fields(payload)
    if len(fields) < 11:
        raise ParseError(f"short +QGPSLOC payload {payload!r}")
    lat, lon = _float_or_none(fields[1]), _float_or_none(fields[2])
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ParseError(f"bad +QGPSLOC position {payload!r}")
    return GnssFix(
        latitude=lat,
        longitude=lon,
        altitude_m=_float_or_none(fields[4]),
        utc=_gnss_utc(fields[9], fields[0]),
        hdop=_float_or_none(fields[3]),
        satellites=_int_or_none(fields[10]),
        speed_kmh=_float_or_none(fields[7]),
        course_deg=_float_or_none(fields[6]),
    )


def nmea_to_degrees(value: str, hemisphere: str) -> float:
    """NMEA ``(d)ddmm.mmmm`` plus ``N``/``S``/``E``/``W`` to signed decimal degrees."""
    number = float(value)
    degrees = int(number // 100)
    minutes = number - 100 * degrees
    if minutes >= 60:
        raise ParseError(f"bad NMEA angle {value!r}")
    result = degrees + minutes / 60
    if hemisphere in ("S", "W"):
        return -result
    if hemisphere not in ("N", "E"):
        raise ParseError(f"bad hemisphere {hemisphere!r}")
    return result


def parse_cgpsinfo(payload: str) -> GnssFix | None:
    """SIMCom ``+CGPSINFO: <lat>,<N/S>,<lon>,<E/W>,<date ddmmyy>,<UTC hhmmss.s>,<alt>,<speed>,
    <course>``; all fields empty means no fix (None). Speed is in knots."""
    fields = split_fields(payload)
    if len(fields) < 4:
        raise ParseError(f"short +CGPSINFO payload {payload!r}")
    if not fields[0] or not fields[2]:
        return None
    try:
        lat = nmea_to_degrees(fields[0], fields[1])
        lon = nmea_to_degrees(fields[2], fields[3])
    except ValueError as exc:
        raise ParseError(f"bad +CGPSINFO position {payload!r}") from exc
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ParseError(f"bad +CGPSINFO position {payload!r}")
    rest = [*fields[4:], "", "", "", "", ""]
    knots = _float_or_none(rest[3])
    return GnssFix(
        latitude=lat,
        longitude=lon,
        altitude_m=_float_or_none(rest[2]),
        utc=_gnss_utc(rest[0], rest[1]),
        speed_kmh=knots * 1.852 if knots is not None else None,
        course_deg=_float_or_none(rest[4]),
    )
