"""The 4G IoT modem: a small contract (``ModemPort``) and the AT driver over a serial port.

The agent is online only through this modem (Quectel EC2x/EG25 or SIMCom SIM7600), so the
driver's first duty is never to wedge the caller: every command has a timeout, unsolicited
result codes and line noise are told apart from replies, and a modem that stops answering is
brought back (radio reset, full reset, reopen of a vanished USB node) with capped backoff on
the injected clock. Reply formats are parsed in ``edge_agent.modem_parse``.

Command timeouts are real seconds, because the serial line is real; only the deliberate waits
of ``recover()`` (and the cool-down between automatic recoveries) go through the ``Clock``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from common.clock import Clock
from common.heartbeat import GnssPosition, ModemHealth
from edge_agent.errors import AgentError
from edge_agent.modem_parse import (
    NOISE_BYTES,
    GnssFix,
    ModemFamily,
    ModemModel,
    OperatorInfo,
    ParseError,
    Registration,
    RegState,
    SignalInfo,
    backoff_delay,
    cme_error,
    combine_registration,
    decode_line,
    final_result,
    info_payload,
    is_unsolicited,
    parse_cclk,
    parse_cgpsinfo,
    parse_cops,
    parse_cpsi,
    parse_csq,
    parse_iccid,
    parse_imei,
    parse_model,
    parse_qeng_servingcell,
    parse_qgpsloc,
    parse_qlts,
    parse_reg,
    split_fields,
    take_lines,
)

if TYPE_CHECKING:
    import serial

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = [
    "GnssFix",
    "ModemError",
    "ModemFamily",
    "ModemGarbage",
    "ModemModel",
    "ModemPort",
    "ModemStatus",
    "ModemTimeout",
    "ModemUnavailable",
    "OperatorInfo",
    "Registration",
    "SerialModem",
    "SignalInfo",
]


class ModemError(AgentError):
    """A command that did not get a usable answer. ``reply`` holds the lines that did arrive
    (for ``ERROR``/``+CME ERROR`` replies, the final line too)."""

    def __init__(self, command: str, reply: Sequence[str] = (), why: str = "") -> None:
        self.command = command
        self.reply = tuple(reply)
        self.why = why or "failed"
        detail = f" (reply {list(self.reply)!r})" if self.reply else ""
        super().__init__(f"{command!r}: {self.why}{detail}")

    @property
    def cme_error(self) -> int | None:
        """The ``+CME ERROR: n`` code of the reply, if it ended with one."""
        return cme_error(self.reply[-1]) if self.reply else None


class ModemTimeout(ModemError):
    """No final result code within ``timeout`` seconds."""

    def __init__(self, command: str, reply: Sequence[str], timeout: float) -> None:
        super().__init__(command, reply, f"no final result code within {timeout:g} s")
        self.timeout = timeout


class ModemGarbage(ModemError):
    """The reply was not text (wrong baud rate, line noise); ``raw`` holds the bytes."""

    def __init__(self, command: str, reply: Sequence[str], raw: bytes) -> None:
        super().__init__(command, reply, f"garbled reply {raw[:80]!r}")
        self.raw = raw


class ModemUnavailable(ModemError):
    """The serial port is closed, cannot be opened, or vanished under us."""


class Urc(NamedTuple):
    at: datetime
    line: str


@dataclass
class ModemCounters:
    """What the driver has lived through; reported in heartbeats."""

    commands: int = 0
    errors: int = 0  # ERROR / +CME ERROR answers
    timeouts: int = 0
    garbage: int = 0
    port_errors: int = 0
    urcs_ignored: int = 0
    stale_lines: int = 0  # late answers to an earlier command, dropped before the next one
    reopens: int = 0
    recovery_attempts: int = 0
    recoveries: int = 0


class ModemStatus(BaseModel):
    """Everything the modem can tell in one go; a query that failed is None and named in
    ``failed`` with the reason."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    taken_at: datetime
    model: ModemModel | None = None
    signal: SignalInfo | None = None
    registration: Registration | None = None
    operator: OperatorInfo | None = None
    iccid: str | None = None
    imei: str | None = None
    gnss: GnssFix | None = None  # None also when the query worked but there is no fix
    network_time: datetime | None = None
    failed: dict[str, str] = Field(default_factory=dict)

    def to_health(self) -> ModemHealth:
        """The heartbeat's view of this snapshot (common/heartbeat.py)."""
        sig = self.signal
        return ModemHealth(
            model=self.model.model if self.model else None,
            rssi_dbm=sig.rssi_dbm if sig else None,
            rsrp_dbm=round(sig.rsrp_dbm) if sig and sig.rsrp_dbm is not None else None,
            rsrq_db=sig.rsrq_db if sig else None,
            sinr_db=sig.sinr_db if sig else None,
            registration=self.registration.status.value if self.registration else None,
            operator=self.operator.name if self.operator else None,
            access_technology=self.operator.technology if self.operator else None,
            iccid=self.iccid,
            imei=self.imei,
            failed=sorted(self.failed),
        )

    def gnss_position(self) -> GnssPosition | None:
        """The heartbeat's GNSS field, or None without a fix."""
        fix = self.gnss
        if fix is None:
            return None
        return GnssPosition(
            lat=fix.latitude,
            lon=fix.longitude,
            altitude_m=fix.altitude_m,
            hdop=fix.hdop,
            at=fix.utc,
        )


class ModemPort(Protocol):
    """What the agent codes against; ``SerialModem`` is the real one."""

    def open(self) -> None: ...
    def close(self) -> None: ...
    def command(self, cmd: str, timeout: float | None = None) -> list[str]: ...
    def recover(self, budget: float | None = None) -> bool: ...
    def counters(self) -> ModemCounters: ...
    def model(self) -> ModemModel: ...
    def signal(self) -> SignalInfo: ...
    def registration(self) -> Registration: ...
    def operator(self) -> OperatorInfo: ...
    def iccid(self) -> str: ...
    def imei(self) -> str: ...
    def gnss_fix(self) -> GnssFix | None: ...
    def network_time(self) -> datetime | None: ...
    def snapshot(self) -> ModemStatus: ...


# Quectel: 516 "Not fixed now"; 505 "Session not active" (GNSS engine off).
_QGPS_NO_FIX = 516
_QGPS_OFF = 505


class AtQueries:
    """The typed queries, written once over ``command()``; vendor commands picked by family."""

    _clock: Clock
    _family: ModemFamily | None = None

    def command(self, cmd: str, timeout: float | None = None) -> list[str]:
        raise NotImplementedError

    def _unresponsive(self) -> bool:
        """True when queries should be skipped because the modem is not answering at all."""
        return False

    def _query(self, cmd: str, prefix: str, parse: Callable[[str], T]) -> T:
        lines = self.command(cmd)
        try:
            return parse(info_payload(lines, prefix))
        except ParseError as exc:
            raise ModemError(cmd, lines, str(exc)) from exc

    def _parse_lines(self, cmd: str, parse: Callable[[list[str]], T]) -> T:
        lines = self.command(cmd)
        try:
            return parse(lines)
        except ParseError as exc:
            raise ModemError(cmd, lines, str(exc)) from exc

    @property
    def family(self) -> ModemFamily:
        """The command family, detected with ``model()`` on first need; "generic" while the
        modem cannot be asked (not cached then, so a later call detects it properly)."""
        if self._family is None:
            try:
                self.model()
            except ModemError:
                return "generic"
        return self._family or "generic"

    def model(self) -> ModemModel:
        """Manufacturer, model, revision (``ATI``, else ``AT+CGMI``/``AT+CGMM``)."""
        try:
            found = self._parse_lines("ATI", parse_model)
        except ModemTimeout:
            raise
        except ModemError:
            found = None
        if found is None or found.model is None:
            found = parse_model([*self.command("AT+CGMI"), *self.command("AT+CGMM")])
        self._family = found.family
        return found

    def signal(self) -> SignalInfo:
        """``AT+CSQ``, plus LTE RSRP/RSRQ/SINR from ``AT+QENG`` (Quectel) or ``AT+CPSI?``
        (SIMCom) when they answer; the LTE part is optional and never fails the call."""
        info = self._query("AT+CSQ", "+CSQ:", parse_csq)
        family = self.family
        extra: dict[str, object] = {}
        try:
            if family == "quectel":
                extra = self._query('AT+QENG="servingcell"', "+QENG:", parse_qeng_servingcell)
            elif family == "simcom":
                extra = self._query("AT+CPSI?", "+CPSI:", parse_cpsi)
        except ModemError as exc:
            log.debug("no LTE measurements: %s", exc)
        return info.model_copy(update=extra)

    def registration(self) -> Registration:
        """``AT+CREG?`` and ``AT+CEREG?`` combined; one of them failing is fine."""
        states: dict[str, RegState | None] = {}
        first_error: ModemError | None = None
        for cmd, prefix in (("AT+CREG?", "+CREG:"), ("AT+CEREG?", "+CEREG:")):
            try:
                states[prefix] = self._query(cmd, prefix, parse_reg)
            except ModemTimeout:
                raise  # a silent modem: don't wait a second time
            except ModemError as exc:
                states[prefix] = None
                first_error = first_error or exc
        if states["+CREG:"] is None and states["+CEREG:"] is None:
            assert first_error is not None
            raise first_error
        return combine_registration(states["+CREG:"], states["+CEREG:"])

    def operator(self) -> OperatorInfo:
        """``AT+COPS?``: operator name (in the format the module is set to) and technology."""
        return self._query("AT+COPS?", "+COPS:", parse_cops)

    def _first_answer(self, commands: Sequence[str], parse: Callable[[list[str]], T]) -> T:
        error: ModemError | None = None
        for cmd in commands:
            try:
                return self._parse_lines(cmd, parse)
            except ModemTimeout:
                raise
            except ModemError as exc:
                error = error or exc
        assert error is not None
        raise error

    def iccid(self) -> str:
        """The SIM's ICCID: ``AT+QCCID`` (Quectel), ``AT+CICCID`` (SIMCom), ``AT+CCID``."""
        vendor = {"quectel": ["AT+QCCID"], "simcom": ["AT+CICCID"]}.get(self.family, [])
        return self._first_answer([*vendor, "AT+CCID"], parse_iccid)

    def imei(self) -> str:
        """The module's IMEI (``AT+CGSN``, else ``AT+GSN``)."""
        return self._first_answer(["AT+CGSN", "AT+GSN"], parse_imei)

    def gnss_fix(self) -> GnssFix | None:
        """The current GNSS fix, or None when there is none yet. Starts the GNSS engine when
        it is off (it then needs from seconds to minutes for a first fix)."""
        family = self.family
        if family == "quectel":
            return self._quectel_fix(start_if_off=True)
        if family == "simcom":
            fix = self._query("AT+CGPSINFO", "+CGPSINFO:", parse_cgpsinfo)
            if fix is None:
                state = split_fields(info_payload(self.command("AT+CGPS?"), "+CGPS:"))
                if state[0] == "0":
                    self.command("AT+CGPS=1")
            return fix
        raise ModemError("AT+QGPSLOC=2", (), "no GNSS commands known for a generic modem")

    def _quectel_fix(self, *, start_if_off: bool) -> GnssFix | None:
        try:
            return self._query("AT+QGPSLOC=2", "+QGPSLOC:", parse_qgpsloc)
        except ModemTimeout:
            raise
        except ModemError as exc:
            text = " ".join(exc.reply).lower()
            if exc.cme_error == _QGPS_NO_FIX or "not fixed" in text:
                return None
            if start_if_off and (exc.cme_error == _QGPS_OFF or "not active" in text):
                self.command("AT+QGPS=1")
                return self._quectel_fix(start_if_off=False)
            raise

    def network_time(self) -> datetime | None:
        """Network time as aware UTC (Quectel ``AT+QLTS=2``, else ``AT+CCLK?``); None when the
        network never sent time."""
        if self.family == "quectel":
            try:
                found = self._query("AT+QLTS=2", "+QLTS:", parse_qlts)
            except ModemTimeout:
                raise
            except ModemError as exc:
                log.debug("AT+QLTS failed, trying AT+CCLK?: %s", exc)
            else:
                if found is not None:
                    return found
        return self._query("AT+CCLK?", "+CCLK:", parse_cclk)

    def snapshot(self) -> ModemStatus:
        """All queries at once. Never raises: a failed query is None and listed in ``failed``;
        once the modem stops answering entirely the rest are skipped rather than each waited
        for."""
        queries: list[tuple[str, Callable[[], Any]]] = [
            ("model", self.model),
            ("signal", self.signal),
            ("registration", self.registration),
            ("operator", self.operator),
            ("iccid", self.iccid),
            ("imei", self.imei),
            ("gnss", self.gnss_fix),
            ("network_time", self.network_time),
        ]
        values: dict[str, Any] = {}
        failed: dict[str, str] = {}
        for index, (name, query) in enumerate(queries):
            if index and self._unresponsive():
                failed[name] = "skipped: modem not answering"
                continue
            try:
                values[name] = query()
            except ModemError as exc:
                failed[name] = str(exc)
            except Exception as exc:  # a parser bug must not take the heartbeat down
                log.exception("modem query %s failed unexpectedly", name)
                failed[name] = f"{type(exc).__name__}: {exc}"
        return ModemStatus(taken_at=self._clock.now(), failed=failed, **values)


# Real seconds each command may take (Quectel/SIMCom manuals' maximum response times), matched
# by longest prefix; anything else gets the driver's ``command_timeout``.
DEFAULT_TIMEOUTS: Mapping[str, float] = {
    "AT+COPS": 180.0,  # network scan / manual selection
    "AT+COPS?": 10.0,
    "AT+CFUN": 15.0,
    "AT+QGPS": 10.0,
    "AT+CGPS": 10.0,
    "AT+QENG": 5.0,
    "AT+CPSI": 5.0,
}

_POLL_S = 0.02  # serial read slice: bounds how late a timeout fires
_GARBAGE_QUIET_S = 0.05  # after garbage, wait for the line to fall silent before flushing
_MAX_LINE = 4096


class SerialModem(AtQueries):
    """The AT driver over a serial port (a USB AT port such as ``/dev/ttyUSB2``, better its
    stable ``/dev/serial/by-id/...`` link, or a UART).

    ``family`` skips detection when the config already knows it.

    After ``max_timeouts`` consecutive commands without an answer, ``command()`` recovers by
    itself (unless ``auto_recover`` is off) and still raises: the caller's command failed.
    That automatic recovery waits at most ``auto_recover_budget`` clock-seconds (default: one
    round of AT / radio reset / full reset, no waiting), and after a failed round the next one
    comes only after a capped backoff (``cooldown_initial`` .. ``cooldown_max``), so a caller
    such as the heartbeat loop is never held for minutes nor resets a rebooting module again
    and again. ``recover()`` called explicitly waits up to ``recover_budget``.
    """

    def __init__(
        self,
        port: str,
        *,
        clock: Clock,
        baudrate: int = 115200,
        command_timeout: float = 2.0,
        timeouts: Mapping[str, float] | None = None,
        family: ModemFamily | None = None,
        max_timeouts: int = 3,
        auto_recover: bool = True,
        auto_recover_budget: float = 0.0,
        recover_budget: float = 120.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        cooldown_initial: float = 30.0,
        cooldown_max: float = 600.0,
        reset_timeout: float = 5.0,
        urc_history: int = 64,
        init_commands: Sequence[str] = ("ATE0", "AT+CMEE=1"),
        rng: random.Random | None = None,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.command_timeout = command_timeout
        self.max_timeouts = max_timeouts
        self.auto_recover = auto_recover
        self.auto_recover_budget = auto_recover_budget
        self.recover_budget = recover_budget
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.cooldown_initial = cooldown_initial
        self.cooldown_max = cooldown_max
        self.reset_timeout = reset_timeout
        self._next_auto_recovery = float("-inf")  # clock.monotonic() of the next allowed round
        self._auto_failures = 0
        self._clock = clock
        self._family = family
        self._timeouts = {**DEFAULT_TIMEOUTS, **(timeouts or {})}
        # ATE0 because echo costs bytes and confuses naive readers; CMEE=1 so errors carry
        # numbers (the GNSS "no fix" answer is +CME ERROR: 516).
        self._init_commands = tuple(init_commands)
        self._rng = rng or random.Random()
        self._serial: serial.Serial | None = None
        self._wanted_open = False
        self._streak = 0  # consecutive commands that got no answer at all
        self._counters = ModemCounters()
        self._urcs: deque[Urc] = deque(maxlen=urc_history)
        # Re-entrant: recover() runs commands while command() holds the lock.
        self._lock = threading.RLock()

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Open the port and set the modem up (echo off, numeric errors). Raises
        ``ModemUnavailable`` if the port cannot be opened; a modem that does not answer the
        set-up commands is left to ``recover()``."""
        with self._lock:
            self._wanted_open = True
            if self._serial is None:
                self._open_port()

    def close(self) -> None:
        """Close the port; commands raise ``ModemUnavailable`` until ``open()``."""
        with self._lock:
            self._wanted_open = False
            self._drop_port()

    def __enter__(self) -> SerialModem:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def counters(self) -> ModemCounters:
        """A copy of the counters."""
        with self._lock:
            return replace(self._counters)

    def pop_urcs(self) -> list[Urc]:
        """The unsolicited result codes seen since the last call (at most ``urc_history``)."""
        with self._lock:
            urcs = list(self._urcs)
            self._urcs.clear()
            return urcs

    def _open_port(self) -> None:
        import serial  # here only, so the module imports on machines without pyserial

        if not os.path.exists(self.port):
            raise ModemUnavailable("open", (), f"{self.port} does not exist")
        try:
            # A fixed short read timeout: reads are sliced and the deadline kept here, since
            # changing pyserial's timeout reconfigures the tty on every call.
            self._serial = serial.Serial(
                self.port, self.baudrate, timeout=_POLL_S, write_timeout=1.0, exclusive=True
            )
        except (OSError, ValueError) as exc:
            raise ModemUnavailable("open", (), f"cannot open {self.port}: {exc}") from exc
        log.info("modem port %s open", self.port)
        for cmd in self._init_commands:
            try:
                self._transact(cmd, None)
            except ModemError as exc:
                log.warning("modem set-up %s failed: %s", cmd, exc)

    def _drop_port(self) -> None:
        if self._serial is not None:
            with contextlib.suppress(OSError):  # the device may already be gone
                self._serial.close()
            self._serial = None

    def _ensure_port(self, cmd: str) -> serial.Serial:
        if not self._wanted_open:
            raise ModemUnavailable(cmd, (), "modem port is closed")
        if self._serial is None:  # lost earlier (USB reset): try once, without waiting
            try:
                self._open_port()
            except ModemUnavailable:
                self._streak += 1
                raise
            self._counters.reopens += 1
        assert self._serial is not None
        return self._serial

    # -- commands ----------------------------------------------------------------------------

    def timeout_for(self, cmd: str) -> float:
        """The timeout ``cmd`` gets: the longest matching prefix of the table, else the
        driver's ``command_timeout``."""
        key = cmd.strip().upper()
        best = ""
        for prefix in self._timeouts:
            if key.startswith(prefix.upper()) and len(prefix) > len(best):
                best = prefix
        return self._timeouts[best] if best else self.command_timeout

    def command(self, cmd: str, timeout: float | None = None) -> list[str]:
        """Send ``cmd`` and return its information lines (echo and URCs removed).

        Raises ``ModemError`` for ERROR/+CME ERROR answers, ``ModemGarbage`` for noise,
        ``ModemTimeout`` when no final result code arrives, ``ModemUnavailable`` when the port
        is closed or gone.
        """
        if "\r" in cmd or "\n" in cmd:
            raise ValueError(f"one command at a time, without line ends: {cmd!r}")
        with self._lock:
            try:
                return self._transact(cmd, timeout)
            except (ModemTimeout, ModemUnavailable):
                if self.auto_recover and self._wanted_open and self._unresponsive():
                    self._auto_recover()
                raise

    def _auto_recover(self) -> None:
        now = self._clock.monotonic()
        if now < self._next_auto_recovery:
            return  # cooling down after a failed round; commands still go out meanwhile
        if self._recover_locked(self.auto_recover_budget):
            self._auto_failures = 0
            return
        pause = backoff_delay(
            self._auto_failures, self.cooldown_initial, self.cooldown_max, self._rng
        )
        self._auto_failures += 1
        self._next_auto_recovery = self._clock.monotonic() + pause
        log.error("modem %s: next automatic recovery in %.0f s", self.port, pause)

    def _unresponsive(self) -> bool:
        return self._streak >= self.max_timeouts

    def _transact(self, cmd: str, timeout: float | None) -> list[str]:
        limit = self.timeout_for(cmd) if timeout is None else timeout
        port = self._ensure_port(cmd)
        try:
            self._drain_pending(port)
            self._counters.commands += 1
            port.write(cmd.encode("ascii") + b"\r")
            return self._read_reply(port, cmd, limit)
        except OSError as exc:  # pyserial's SerialException is an OSError
            self._counters.port_errors += 1
            self._streak += 1
            log.warning("modem port %s failed: %s", self.port, exc)
            self._drop_port()
            raise ModemUnavailable(cmd, (), f"port failed: {exc}") from exc

    def _read_reply(self, port: serial.Serial, cmd: str, limit: float) -> list[str]:
        deadline = time.monotonic() + limit
        echo = cmd.strip().upper()
        buffer = bytearray()
        raw = bytearray()
        info: list[str] = []
        while time.monotonic() < deadline:
            chunk = port.read(max(1, port.in_waiting))
            if not chunk:
                continue
            raw += chunk
            buffer += chunk
            if any(b in NOISE_BYTES for b in chunk) or len(buffer) > _MAX_LINE:
                self._garbage(port, cmd, info, raw, deadline)
            for line_bytes in take_lines(buffer):
                line = decode_line(line_bytes)
                if line is None:
                    self._garbage(port, cmd, info, raw, deadline)
                if not info and line.upper() == echo:
                    continue  # echo is back on (e.g. after a module reboot)
                verdict = final_result(line)
                if verdict is not None:
                    self._streak = 0
                    if verdict == "ok":
                        return info
                    self._counters.errors += 1
                    raise ModemError(cmd, [*info, line], f"modem answered {line}")
                if is_unsolicited(line, cmd):
                    self._note_urc(line)
                else:
                    info.append(line)
        if buffer and decode_line(bytes(buffer)) is None:
            self._garbage(port, cmd, info, raw, deadline)
        self._streak += 1
        self._counters.timeouts += 1
        raise ModemTimeout(cmd, info, limit)

    def _garbage(
        self, port: serial.Serial, cmd: str, info: list[str], raw: bytearray, deadline: float
    ) -> NoReturn:
        """Noise on the line: let the rest of it arrive, throw it all away, and fail only this
        command, so the next one starts on a clean line."""
        self._counters.garbage += 1
        quiet_until = time.monotonic() + _GARBAGE_QUIET_S
        hard_stop = max(deadline, quiet_until)  # a line that never falls quiet still ends
        while time.monotonic() < min(quiet_until, hard_stop):
            chunk = port.read(max(1, port.in_waiting))
            if chunk:
                raw += chunk
                quiet_until = time.monotonic() + _GARBAGE_QUIET_S
        port.reset_input_buffer()
        raise ModemGarbage(cmd, info, bytes(raw))

    def _drain_pending(self, port: serial.Serial) -> None:
        """Lines that arrived between commands: URCs, or the late answer to a command that
        timed out. Either way they are not the next command's reply."""
        if not port.in_waiting:
            return
        pending = bytearray(port.read(port.in_waiting))
        for line_bytes in take_lines(pending):
            line = decode_line(line_bytes)
            if line is None:
                self._counters.garbage += 1
            elif final_result(line) is not None or not is_unsolicited(line, None):
                self._counters.stale_lines += 1
            else:
                self._note_urc(line)
        if pending:  # a fragment without its line end: the rest would confuse the reply
            port.reset_input_buffer()

    def _note_urc(self, line: str) -> None:
        self._counters.urcs_ignored += 1
        self._urcs.append(Urc(self._clock.now(), line))
        log.debug("URC %s", line)

    # -- recovery ----------------------------------------------------------------------------

    def recover(self, budget: float | None = None) -> bool:
        """Bring a modem that stopped answering back: ``AT`` again; radio off/on
        (``AT+CFUN=0``/``AT+CFUN=1``); full reset (``AT+CFUN=1,1``); then poll with ``AT``,
        reopening the port if its node vanished, with capped backoff on the clock until
        ``budget`` (default ``recover_budget``) clock-seconds have passed. True once the modem
        answers; never raises."""
        with self._lock:
            return self._recover_locked(self.recover_budget if budget is None else budget)

    def _recover_locked(self, budget: float) -> bool:
        self._counters.recovery_attempts += 1
        reopens = self._counters.reopens
        log.warning("modem %s not answering; recovering", self.port)
        if self._answers() or self._radio_reset():
            return self._recovered(reopened=self._counters.reopens > reopens)
        waited = 0.0
        attempt = 0
        while waited < budget:
            delay = backoff_delay(attempt, self.backoff_initial, self.backoff_max, self._rng)
            self._clock.sleep(delay)
            waited += delay
            attempt += 1
            if self._answers():
                return self._recovered(reopened=self._counters.reopens > reopens)
        log.error("modem %s still not answering after %.0f s of recovery", self.port, waited)
        return False

    def _radio_reset(self) -> bool:
        if self._serial is None:
            return False  # the node is gone: only waiting for it to come back helps
        self._try("AT+CFUN=0", reset=True)
        self._try("AT+CFUN=1", reset=True)
        if self._answers():
            return True
        # The module reboots: on USB its ttys vanish for 10-30 s and come back.
        self._try("AT+CFUN=1,1", reset=True)
        return False

    def _answers(self) -> bool:
        return self._try("AT")

    def _try(self, cmd: str, *, reset: bool = False) -> bool:
        # A modem that just ignored AT rarely answers CFUN late; waiting the manual's full
        # 15 s for each reset command would hold the caller for most of a minute.
        timeout = min(self.timeout_for(cmd), self.reset_timeout) if reset else None
        try:
            self._transact(cmd, timeout)
        except ModemError:
            return False
        return True

    def _recovered(self, *, reopened: bool) -> bool:
        self._streak = 0
        self._counters.recoveries += 1
        if not reopened:  # a reopen has set the module up already
            for cmd in self._init_commands:  # a reset module has echo back on
                self._try(cmd)
        log.info("modem %s answering again", self.port)
        return True


if TYPE_CHECKING:  # mypy proves the real driver honours the contract

    def _conforms(modem: SerialModem) -> ModemPort:
        return modem
