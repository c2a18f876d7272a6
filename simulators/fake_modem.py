"""A 4G modem simulator that answers AT commands on a real pseudo-terminal.

The driver under test opens ``FakeModem.path`` with pyserial exactly as it would open
``/dev/ttyUSB2`` on a Pi: same termios, same byte stream, same timing behaviour. Profiles
mimic a Quectel EC25 and a SIMCom SIM7600G-H on Chinese networks. Tests flip fault switches
while it runs:

- ``silent``: reads and counts commands, answers nothing.
- ``garbage``: answers line noise (invalid bytes, broken lines), sometimes followed by a late
  ``OK``.
- ``urc_storm``: unsolicited result codes before and in the middle of every reply.
- ``recover_only_after_reset``: hung (silent) until ``AT+CFUN=1,1`` or the ``AT+CFUN=0`` /
  ``AT+CFUN=1`` pair; with ``full_reset_only`` only ``AT+CFUN=1,1`` helps.
- ``echo``: echoes commands (modules boot with echo on; ``ATE0`` turns it off).
- ``registration``: the 27.007 ``<stat>`` (1 home, 5 roaming, 2 searching, 3 denied, 0 none).
- ``signal``: a ``FakeSignal`` (CSQ index, LTE RSRP/RSRQ/SINR).
- ``no_fix`` / ``gnss_on``: GNSS without a fix / engine stopped.
- ``network_time``: False makes the clock read the module's power-on default.
- ``reboot_seconds`` / ``vanish_on_reboot``: after ``AT+CFUN=1,1`` the module is silent for
  a while, and with a ``link`` path its node disappears and comes back as a new pty, as a USB
  modem's ``/dev/serial/by-id`` link does.

``received`` lists every command line that reached the modem, answered or not.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import threading
import time
import tty
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from common.clock import Clock, SystemClock

# While a reboot is under way the loop looks at the clock this often (real seconds) to end it.
REBOOT_POLL_S = 0.01


@dataclass
class FakeSignal:
    csq: int = 22  # 27.007 index: -69 dBm
    ber: int = 99
    rsrp: int = -92  # dBm
    rsrq: int = -9  # dB
    rssi: int = -63  # dBm
    sinr: int = 14  # dB


@dataclass(frozen=True)
class FakeProfile:
    family: str
    manufacturer: str
    model: str
    revision: str
    ati: tuple[str, ...]
    imei: str
    iccid: str
    operator_long: str
    operator_short: str
    operator_numeric: str
    tac: str
    cell_id: str
    band: int
    earfcn: int
    latitude: float
    longitude: float
    altitude_m: float
    tz_quarters: int = 32  # China Standard Time, UTC+8
    boot_urcs: tuple[str, ...] = ()
    storm_urcs: tuple[str, ...] = field(default_factory=tuple)


QUECTEL_EC25 = FakeProfile(
    family="quectel",
    manufacturer="Quectel",
    model="EC25",
    revision="EC25EFAR06A03M4G",
    ati=("Quectel", "EC25", "Revision: EC25EFAR06A03M4G"),
    imei="861107034512345",
    iccid="89860012345678901234",
    operator_long="CHINA MOBILE",
    operator_short="CMCC",
    operator_numeric="46000",
    tac="5A1B",
    cell_id="C8A1B02",
    band=3,
    earfcn=1650,
    latitude=31.230416,  # People's Square, Shanghai
    longitude=121.473701,
    altitude_m=12.4,
    boot_urcs=("RDY", "+CFUN: 1", "+CPIN: READY", "+QUSIM: 1", "+QIND: SMS DONE", "+QIND: PB DONE"),
    storm_urcs=(
        "+CREG: 1",
        '+CEREG: 1,"5A1B","0C8A1B02",7',
        '+QIND: "csq",22,99',
        "RDY",
        "+CPIN: READY",
        "RING",
        "+CGEV: ME PDN ACT 1",
        '+QGPSURC: "day"',
        "+CREG: 5",
        "+QIND: SMS DONE",
    ),
)

SIMCOM_SIM7600 = FakeProfile(
    family="simcom",
    manufacturer="SIMCOM INCORPORATED",
    model="SIMCOM_SIM7600G-H",
    revision="SIM7600M22_V2.0.1",
    ati=(
        "Manufacturer: SIMCOM INCORPORATED",
        "Model: SIMCOM_SIM7600G-H",
        "Revision: SIM7600M22_V2.0.1",
        "IMEI: 868822041234567",
        "+GCAP: +CGSM",
    ),
    imei="868822041234567",
    iccid="8986031945204789123F",
    operator_long="CHN-CT",
    operator_short="CT",
    operator_numeric="46011",
    tac="0x6C2E",
    cell_id="187214780",
    band=1,
    earfcn=100,
    latitude=30.657300,  # Tianfu Square, Chengdu
    longitude=104.065800,
    altitude_m=498.6,
    boot_urcs=("START", "+CPIN: READY", "SMS DONE", "PB DONE"),
    storm_urcs=(
        "+CREG: 1",
        "+CEREG: 1",
        "+CPIN: READY",
        "SMS DONE",
        "PB DONE",
        "RING",
        "+CGEV: EPS PDN ACT 1",
        "+CTZV: +32",
        '+CREG: 1,"6C2E","0B28A3BC",7',
    ),
)

_QUECTEL_ONLY = ("AT+QENG", "AT+QGPS", "AT+QCCID", "AT+QLTS")
_SIMCOM_ONLY = ("AT+CPSI", "AT+CGPS", "AT+CICCID")


class FakeModem:
    """A modem on a pty; ``start()`` it, point the driver at ``path``, ``stop()`` it."""

    def __init__(
        self,
        profile: FakeProfile = QUECTEL_EC25,
        *,
        clock: Clock | None = None,
        link: Path | None = None,
        seed: int = 0,
    ) -> None:
        self.profile = profile
        self.clock = clock or SystemClock()
        self.link = link
        # fault switches, flipped by tests at run time
        self.silent = False
        self.garbage = False
        self.urc_storm = False
        self.recover_only_after_reset = False
        self.full_reset_only = False
        self.echo = True
        self.registration = 1
        self.signal = FakeSignal()
        self.no_fix = False
        self.gnss_on = True  # deployments set GNSS autostart (AT+QGPSCFG="autogps",1 etc.)
        self.network_time = True
        self.latency = 0.0  # real seconds before each answer
        self.reboot_seconds = 0.0  # clock seconds of silence after AT+CFUN=1,1
        self.vanish_on_reboot = False
        # what happened
        self.received: list[str] = []
        self.urcs_sent = 0
        self.reboots = 0
        self.ptys_created = 0
        # modem state
        self._cmee = 0
        self._creg_n = 0
        self._cereg_n = 0
        self._cops_format = 0
        self._cfun = 1
        self._cfun0_while_hung = False
        self._reboot_until: float | None = None
        self._rng = random.Random(seed)
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_path = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = -1, -1  # wakes the loop from ``stop()``

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """What the driver opens: the stable link if there is one, else the pty's slave."""
        return str(self.link) if self.link else self._slave_path

    def start(self) -> FakeModem:
        """Create the pty and start answering."""
        if self.vanish_on_reboot and self.link is None:
            raise ValueError("vanish_on_reboot needs a link path to vanish and come back")
        self._new_pty()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="fake-modem", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering and remove the pty (and link)."""
        self._stop.set()
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._close_pty()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> FakeModem:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self, command: str) -> int:
        """How many times ``command`` reached the modem."""
        with self._lock:
            return sum(1 for c in self.received if c.upper() == command.upper())

    def _new_pty(self) -> None:
        master, slave = os.openpty()
        self.ptys_created += 1
        # Raw, or the line discipline would echo and translate CR to LF behind everyone's back.
        tty.setraw(slave)
        # The fake keeps the slave open too, so the master never reads EIO while the driver
        # closes and reopens its side.
        self._master, self._slave = master, slave
        self._slave_path = os.ttyname(slave)
        if self.link is not None:
            tmp = self.link.with_name(self.link.name + ".new")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self._slave_path)
            os.replace(tmp, self.link)

    def _close_pty(self) -> None:
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        # Blocks until the driver writes or ``stop()`` wakes it (looking at the clock only while
        # a reboot is under way): an idle modem costs nothing, and a replay runs one per device.
        buffer = bytearray()
        while not self._stop.is_set():
            self._finish_reboot_if_due()
            fd = self._master
            waiting = [self._wake_r] if fd is None else [self._wake_r, fd]
            try:
                ready, _, _ = select.select(waiting, [], [], self._reboot_poll_s())
                if self._wake_r in ready:
                    os.read(self._wake_r, 64)
                data = os.read(fd, 4096) if fd is not None and fd in ready else b""
            except OSError:
                data = b""
            buffer += data
            while True:
                ends = [i for i in (buffer.find(b"\r"), buffer.find(b"\n")) if i >= 0]
                if not ends:
                    break
                end = min(ends)
                line = bytes(buffer[:end]).decode("ascii", "replace").strip()
                del buffer[: end + 1]
                if line:
                    self._handle(line)

    def _reboot_poll_s(self) -> float | None:
        """Real seconds the loop may block: for good unless a reboot is to end meanwhile."""
        return None if self._reboot_until is None else REBOOT_POLL_S

    def _handle(self, cmd: str) -> None:
        with self._lock:
            self.received.append(cmd)
        if self._reboot_until is not None or self.silent:
            return
        if self.recover_only_after_reset:
            self._handle_hung(cmd)
            return
        if self.latency:
            time.sleep(self.latency)
        if self.echo:
            self._write(cmd.encode("ascii", "replace") + b"\r")
        if self.garbage:
            self._write_garbage()
            return
        lines, final = self._answer(cmd)
        self._write_reply(cmd, lines, final)
        if cmd.upper() == "AT+CFUN=1,1":
            self._start_reboot()

    def _handle_hung(self, cmd: str) -> None:
        upper = cmd.upper()
        if upper == "AT+CFUN=1,1":
            self.recover_only_after_reset = False
            self._write_reply(cmd, [], "OK")
            self._start_reboot()
        elif upper == "AT+CFUN=0":
            self._cfun0_while_hung = True
        elif upper == "AT+CFUN=1" and self._cfun0_while_hung and not self.full_reset_only:
            self.recover_only_after_reset = False
            self._cfun0_while_hung = False
            self._write_reply(cmd, [], "OK")

    # -- reboot ------------------------------------------------------------------------------

    def _start_reboot(self) -> None:
        self.reboots += 1
        self._reboot_until = self.clock.monotonic() + self.reboot_seconds
        if self.vanish_on_reboot:
            self._close_pty()
        if self.reboot_seconds <= 0:
            self._finish_reboot_if_due()

    def _finish_reboot_if_due(self) -> None:
        if self._reboot_until is None or self.clock.monotonic() < self._reboot_until:
            return
        self._reboot_until = None
        self.echo = True  # ATE0 is not saved without AT&W
        self._cmee = 0
        self._cfun = 1
        if self._master is None:
            self._new_pty()
        for urc in self.profile.boot_urcs:
            self._write(f"\r\n{urc}\r\n".encode())

    # -- writing -----------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        fd = self._master
        if fd is None:
            return
        deadline = time.monotonic() + 1.0
        while data and time.monotonic() < deadline:
            try:
                _, writable, _ = select.select([], [fd], [], 0.05)
                if writable:
                    data = data[os.write(fd, data) :]
            except OSError:
                return

    def _write_reply(self, cmd: str, lines: list[str], final: str) -> None:
        out: list[str] = []
        storm = self.urc_storm
        if storm:
            out += [self._urc_for(cmd), self._urc_for(cmd)]
        for line in lines:
            out.append(line)
            if storm:
                out.append(self._urc_for(cmd))
        if storm and not lines:
            out.append(self._urc_for(cmd))
        out.append(final)
        self._write(b"".join(f"\r\n{line}\r\n".encode() for line in out))

    def _urc_for(self, cmd: str) -> str:
        """A URC that cannot honestly be read as part of ``cmd``'s reply (a real modem can
        send ``+CPIN: READY`` during ``AT+CPIN?``; no driver can tell that one apart)."""
        name = cmd.upper().split("=")[0].split("?")[0].removeprefix("AT")
        choices = [
            u
            for u in self.profile.storm_urcs
            if not u.startswith(name + ":") or name in ("+CREG", "+CEREG")
        ]
        self.urcs_sent += 1
        return self._rng.choice(choices)

    def _write_garbage(self) -> None:
        noise = self._rng.randbytes(self._rng.randint(8, 40))
        # Always at least one byte no AT reply contains, plus a broken reply-looking line.
        self._write(b"\r\n+C\xffSQ: 2\x00" + noise + b"\r\n")
        if self._rng.random() < 0.5:
            time.sleep(0.01)  # a late, orphaned final result code
            self._write(b"\r\nOK\r\n")

    # -- answers -----------------------------------------------------------------------------

    def _error(self, code: int, text: str) -> str:
        if self._cmee == 1:
            return f"+CME ERROR: {code}"
        if self._cmee == 2:
            return f"+CME ERROR: {text}"
        return "ERROR"

    def _registered(self) -> bool:
        return self._cfun == 1 and self.registration in (1, 5)

    def _answer(self, cmd: str) -> tuple[list[str], str]:
        p = self.profile
        upper = cmd.upper()
        family_only = _SIMCOM_ONLY if p.family == "quectel" else _QUECTEL_ONLY
        if upper.startswith(family_only):
            return [], "ERROR"
        simple = {
            "AT": [],
            "ATI": list(p.ati),
            "AT+CGMI": [p.manufacturer],
            "AT+CGMM": [p.model],
            "AT+CGMR": [p.revision],
            "AT+CGSN": [p.imei],
            "AT+GSN": [p.imei],
            "AT+CPIN?": ["+CPIN: READY"],
            "AT+CFUN?": [f"+CFUN: {self._cfun}"],
            "AT+QCCID": [f"+QCCID: {p.iccid}"],
            "AT+CICCID": [f"+ICCID: {p.iccid}"],
            "AT+CCID": [f"+CCID: {p.iccid}"],
        }
        if upper in simple:
            return simple[upper], "OK"
        if upper in ("ATE0", "ATE1"):
            self.echo = upper == "ATE1"
            return [], "OK"
        if upper.startswith("AT+CMEE="):
            self._cmee = int(upper[8:] or 0)
            return [], "OK"
        if upper in ("AT+CFUN=0", "AT+CFUN=1", "AT+CFUN=1,1", "AT+CFUN=4"):
            self._cfun = 0 if upper.endswith(("=0", "=4")) else 1
            return [], "OK"
        if upper == "AT+CSQ":
            if self._cfun != 1:
                return ["+CSQ: 99,99"], "OK"
            return [f"+CSQ: {self.signal.csq},{self.signal.ber}"], "OK"
        if upper in ("AT+CREG?", "AT+CEREG?"):
            return [self._reg_reply(upper)], "OK"
        if upper.startswith("AT+CREG="):
            self._creg_n = int(upper[8:])
            return [], "OK"
        if upper.startswith("AT+CEREG="):
            self._cereg_n = int(upper[9:])
            return [], "OK"
        if upper == "AT+COPS?":
            if not self._registered():
                return ["+COPS: 0"], "OK"
            name = (p.operator_long, p.operator_short, p.operator_numeric)[self._cops_format]
            return [f'+COPS: 0,{self._cops_format},"{name}",7'], "OK"
        if upper.startswith("AT+COPS=3,"):
            self._cops_format = int(upper[10:])
            return [], "OK"
        if upper == "AT+CCLK?":
            return [f'+CCLK: "{self._local_time("%y/%m/%d,%H:%M:%S")}"'], "OK"
        if upper == "AT+QLTS=2":
            if not self.network_time:
                return ['+QLTS: ""'], "OK"
            return [f'+QLTS: "{self._local_time("%Y/%m/%d,%H:%M:%S")},0"'], "OK"
        if upper == 'AT+QENG="SERVINGCELL"':
            return [self._qeng()], "OK"
        if upper == "AT+CPSI?":
            return [self._cpsi()], "OK"
        return self._answer_gnss(upper)

    def _reg_reply(self, upper: str) -> str:
        eps = upper == "AT+CEREG?"
        n = self._cereg_n if eps else self._creg_n
        stat = self.registration if self._cfun == 1 else 0
        prefix = "+CEREG" if eps else "+CREG"
        if n >= 2 and stat in (1, 5):
            return f'{prefix}: {n},{stat},"{self.profile.tac}","{self.profile.cell_id}",7'
        return f"{prefix}: {n},{stat}"

    def _local_time(self, fmt: str) -> str:
        p = self.profile
        if not self.network_time:  # the module's power-on default
            default = "80/01/06,00:00:12" if p.family == "quectel" else "04/01/01,00:00:20"
            return default + "+00" if "%y" in fmt else ""
        local = self.clock.now() + timedelta(minutes=15 * p.tz_quarters)
        return f"{local.strftime(fmt)}{p.tz_quarters:+03d}"

    def _qeng(self) -> str:
        if not self._registered():
            return '+QENG: "servingcell","SEARCH"'
        p, s = self.profile, self.signal
        mcc, mnc = p.operator_numeric[:3], p.operator_numeric[3:]
        return (
            f'+QENG: "servingcell","NOCONN","LTE","FDD",{mcc},{mnc},{p.cell_id},123,'
            f"{p.earfcn},{p.band},5,5,{p.tac},{s.rsrp},{s.rsrq},{s.rssi},{s.sinr},40"
        )

    def _cpsi(self) -> str:
        if not self._registered():
            return "+CPSI: NO SERVICE,Online"
        p, s = self.profile, self.signal
        mcc, mnc = p.operator_numeric[:3], p.operator_numeric[3:]
        return (
            f"+CPSI: LTE,Online,{mcc}-{mnc},{p.tac},{p.cell_id},257,EUTRAN-BAND{p.band},"
            f"{p.earfcn},5,5,{s.rsrq * 10},{s.rsrp * 10},{s.rssi * 10},{s.sinr}"
        )

    def _answer_gnss(self, upper: str) -> tuple[list[str], str]:
        p = self.profile
        now = self.clock.now()
        if upper == "AT+QGPS=1":
            if self.gnss_on:
                return [], self._error(504, "Session is ongoing")
            self.gnss_on = True
            return [], "OK"
        if upper == "AT+QGPSEND":
            self.gnss_on = False
            return [], "OK"
        if upper == "AT+QGPSLOC=2":
            if not self.gnss_on:
                return [], self._error(505, "Session not active")
            if self.no_fix:
                return [], self._error(516, "Not fixed now")
            return [
                f"+QGPSLOC: {now:%H%M%S}.000,{p.latitude:.5f},{p.longitude:.5f},0.9,"
                f"{p.altitude_m:.1f},3,0.00,0.0,0.0,{now:%d%m%y},09"
            ], "OK"
        if upper == "AT+CGPS?":
            return [f"+CGPS: {int(self.gnss_on)},1"], "OK"
        if upper in ("AT+CGPS=1", "AT+CGPS=0"):
            self.gnss_on = upper.endswith("1")
            return [], "OK"
        if upper == "AT+CGPSINFO":
            if not self.gnss_on or self.no_fix:
                return ["+CGPSINFO: ,,,,,,,,"], "OK"
            return [
                f"+CGPSINFO: {_nmea(p.latitude, 2)},{'N' if p.latitude >= 0 else 'S'},"
                f"{_nmea(p.longitude, 3)},{'E' if p.longitude >= 0 else 'W'},"
                f"{now:%d%m%y},{now:%H%M%S}.0,{p.altitude_m:.1f},0.0,0.0"
            ], "OK"
        return [], "ERROR"


def _nmea(degrees: float, width: int) -> str:
    """Decimal degrees to NMEA ``(d)ddmm.mmmmmm`` (unsigned; the hemisphere says the sign)."""
    value = abs(degrees)
    whole = int(value)
    minutes = (value - whole) * 60
    return f"{whole:0{width}d}{minutes:09.6f}"
