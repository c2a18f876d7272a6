"""The real SerialModem driver against FakeModem on a real pseudo-terminal, both profiles."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from common.clock import Clock, ScaledClock, VirtualClock
from edge_agent.modem import (
    ModemError,
    ModemGarbage,
    ModemTimeout,
    ModemUnavailable,
    SerialModem,
)
from edge_agent.modem_parse import RegStatus
from simulators.fake_modem import QUECTEL_EC25, SIMCOM_SIM7600, FakeModem, FakeProfile

START = datetime(2024, 3, 15, 2, 23, 45, tzinfo=UTC)
# Tight real timeouts keep the suite fast; the default table allows minutes for COPS scans.
FAST = dict.fromkeys(
    ["AT+CFUN", "AT+COPS", "AT+COPS?", "AT+QGPS", "AT+CGPS", "AT+QENG", "AT+CPSI"], 0.1
)

PROFILES = [
    pytest.param(QUECTEL_EC25, id="quectel-ec25"),
    pytest.param(SIMCOM_SIM7600, id="sim7600"),
]


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start=START)


@pytest.fixture(params=PROFILES)
def fake(request: pytest.FixtureRequest, clock: VirtualClock) -> Iterator[FakeModem]:
    with FakeModem(request.param, clock=clock) as modem:
        yield modem


def driver(fake: FakeModem, clock: Clock, **options: Any) -> SerialModem:
    settings: dict[str, Any] = {"command_timeout": 0.1, "timeouts": FAST, **options}
    modem = SerialModem(fake.path, clock=clock, **settings)
    modem.open()
    return modem


def test_snapshot_has_every_field(fake: FakeModem, clock: VirtualClock):
    profile = fake.profile
    with driver(fake, clock) as modem:
        status = modem.snapshot()
    assert status.failed == {}
    assert status.model is not None and status.model.family == profile.family
    assert status.signal is not None
    assert (status.signal.rssi_dbm, status.signal.rsrp_dbm, status.signal.rsrq_db) == (-69, -92, -9)
    assert status.signal.sinr_db == 14 and status.signal.rat == "LTE"
    assert status.registration is not None and status.registration.status is RegStatus.HOME
    assert status.operator is not None and status.operator.name == profile.operator_long
    assert status.operator.technology == "LTE"
    assert status.iccid == profile.iccid.rstrip("F") and status.iccid.startswith("8986")
    assert status.imei == profile.imei
    assert status.gnss is not None
    assert status.gnss.latitude == pytest.approx(profile.latitude, abs=1e-5)
    assert status.gnss.longitude == pytest.approx(profile.longitude, abs=1e-5)
    assert status.gnss.utc == START
    assert status.network_time == START  # +32 quarter-hours on the wire, UTC here
    assert status.taken_at == START
    health = status.to_health()
    assert (health.rssi_dbm, health.registration, health.failed) == (-69, "home", [])
    position = status.gnss_position()
    assert position is not None and position.datum == "wgs84"
    # each family was asked with its own commands
    vendor = {
        "quectel": ['AT+QENG="servingcell"', "AT+QCCID", "AT+QGPSLOC=2", "AT+QLTS=2"],
        "simcom": ["AT+CPSI?", "AT+CICCID", "AT+CGPSINFO", "AT+CCLK?"],
    }[profile.family]
    assert all(fake.count(cmd) == 1 for cmd in vendor)


def test_echo_is_skipped_even_when_it_comes_back(fake: FakeModem, clock: VirtualClock):
    assert fake.echo  # modules boot echoing; the driver's own ATE0 is echoed too
    with driver(fake, clock) as modem:
        assert fake.received[:2] == ["ATE0", "AT+CMEE=1"]
        fake.echo = True  # as after a module reboot
        assert modem.command("AT+CSQ") == ["+CSQ: 22,99"]
        assert modem.command("ATI") == list(fake.profile.ati)
        assert modem.counters().urcs_ignored == 0


def test_urcs_before_and_inside_replies_are_ignored_and_counted(
    fake: FakeModem, clock: VirtualClock
):
    with driver(fake, clock) as modem:
        calm = modem.snapshot()
        fake.urc_storm = True
        stormy = modem.snapshot()
        assert stormy.failed == {}
        assert stormy.model_dump() == calm.model_dump()
        assert fake.urcs_sent > 20
        assert modem.counters().urcs_ignored == fake.urcs_sent
        urcs = [u.line for u in modem.pop_urcs()]
        assert urcs and set(urcs) <= set(fake.profile.storm_urcs)
        assert modem.pop_urcs() == []


def test_registration_urcs_do_not_pass_for_the_reply(fake: FakeModem, clock: VirtualClock):
    """``+CREG: 1`` / ``+CREG: 5`` URCs inside the ``AT+CREG?`` reply of a searching modem."""
    fake.registration = 2
    fake.urc_storm = True
    with driver(fake, clock) as modem:
        for _ in range(15):
            reg = modem.registration()
            assert (reg.status, reg.registered) == (RegStatus.SEARCHING, False)


def test_garbage_fails_one_command_and_the_next_works(fake: FakeModem, clock: VirtualClock):
    with driver(fake, clock) as modem:
        for round_ in range(1, 7):  # with and without a late orphan "OK" after the noise
            fake.garbage = True
            with pytest.raises(ModemGarbage) as caught:
                modem.command("AT+CSQ")
            assert isinstance(caught.value, ModemError)
            assert caught.value.command == "AT+CSQ" and b"\xff" in caught.value.raw
            fake.garbage = False
            assert modem.command("AT+CSQ") == ["+CSQ: 22,99"]
            assert modem.command("AT+CGSN") == [fake.profile.imei]
            assert modem.counters().garbage == round_
        assert modem.counters().timeouts == 0


def test_silence_times_out_within_the_timeout(fake: FakeModem, clock: VirtualClock):
    with driver(fake, clock, auto_recover=False, command_timeout=0.15) as modem:
        fake.silent = True
        started = time.monotonic()
        with pytest.raises(ModemTimeout) as caught:
            modem.command("AT+CSQ")
        elapsed = time.monotonic() - started
        assert 0.15 <= elapsed < 0.35  # one 20 ms read slice late at most, plus scheduling
        assert caught.value.timeout == 0.15
        started = time.monotonic()
        with pytest.raises(ModemTimeout):
            modem.command("AT+CSQ", timeout=0.05)
        assert 0.05 <= time.monotonic() - started < 0.25
        assert fake.count("AT+CSQ") == 2  # sent, just not answered
        assert modem.counters().timeouts == 2
        fake.silent = False
        assert modem.command("AT+CSQ") == ["+CSQ: 22,99"]


def test_error_answer_is_a_modem_error_not_a_timeout(fake: FakeModem, clock: VirtualClock):
    with driver(fake, clock) as modem:
        with pytest.raises(ModemError) as caught:
            modem.command("AT+NOSUCH")
        assert not isinstance(caught.value, ModemTimeout)
        assert caught.value.reply == ("ERROR",)
        if fake.profile.family == "quectel":
            fake.no_fix = True
            with pytest.raises(ModemError) as cme:
                modem.command("AT+QGPSLOC=2")
            assert cme.value.cme_error == 516  # numeric because the driver sent AT+CMEE=1
        assert modem.counters().timeouts == 0


def test_timeouts_are_per_command():
    modem = SerialModem("/dev/null-modem", clock=VirtualClock(), command_timeout=2.0)
    assert modem.timeout_for("AT+CSQ") == 2.0
    assert modem.timeout_for("AT+COPS=?") == 180.0
    assert modem.timeout_for("AT+COPS?") == 10.0
    assert modem.timeout_for("AT+CFUN=1,1") == 15.0
    assert modem.timeout_for("at+qgpsloc=2") == 10.0


def test_recover_resets_the_radio_of_a_hung_modem(fake: FakeModem, clock: VirtualClock):
    with driver(fake, clock, auto_recover=False) as modem:
        fake.recover_only_after_reset = True
        for _ in range(3):
            with pytest.raises(ModemTimeout):
                modem.command("AT+CSQ")
        assert modem.recover() is True
        assert (fake.count("AT+CFUN=0"), fake.count("AT+CFUN=1")) == (1, 1)
        assert fake.count("AT+CFUN=1,1") == 0
        assert modem.command("AT+CSQ") == ["+CSQ: 22,99"]
        counters = modem.counters()
        assert (counters.recovery_attempts, counters.recoveries) == (1, 1)


def test_third_timeout_recovers_by_itself(fake: FakeModem, clock: VirtualClock):
    with driver(fake, clock) as modem:
        fake.recover_only_after_reset = True
        for attempt in range(1, 4):
            with pytest.raises(ModemTimeout):
                modem.command("AT+CSQ")
            assert fake.count("AT+CFUN=0") == (1 if attempt == 3 else 0)
        assert modem.command("AT+CSQ") == ["+CSQ: 22,99"]
        assert modem.counters().recoveries == 1


def test_automatic_recovery_never_waits_and_cools_down(clock: VirtualClock):
    """Inside command() a round of resets is tried without waiting on the clock, and a dead
    modem is not reset again until the cool-down has passed."""
    with FakeModem(QUECTEL_EC25, clock=clock) as fake, driver(fake, clock) as modem:
        fake.silent = True
        for _ in range(4):
            with pytest.raises(ModemTimeout):
                modem.command("AT+CSQ")
        assert fake.count("AT+CFUN=1,1") == 1  # one round, at the third timeout
        assert clock.monotonic() == 1000.0  # and it did not sleep
        clock.advance(36.0)  # past the first cool-down (30 s, +20 % jitter at most)
        with pytest.raises(ModemTimeout):
            modem.command("AT+CSQ")
        assert fake.count("AT+CFUN=1,1") == 2
        counters = modem.counters()
        assert (counters.recovery_attempts, counters.recoveries) == (2, 0)
        fake.silent = False
        assert modem.command("AT+CSQ") == ["+CSQ: 22,99"]  # answers again: streak cleared


@pytest.mark.parametrize("profile", PROFILES)
def test_full_reset_with_the_node_vanishing_and_coming_back(profile: FakeProfile, tmp_path: Path):
    """Only AT+CFUN=1,1 helps; the module then reboots and its USB node goes away for a while,
    as /dev/serial/by-id links do. Backoff and reboot both run on the same sped-up clock."""
    clock = ScaledClock(speed=20)
    link = tmp_path / "ttyUSB2"
    with FakeModem(profile, clock=clock, link=link) as fake:
        fake.reboot_seconds = 4.0
        fake.vanish_on_reboot = True
        assert os.path.islink(link)
        options = {"backoff_initial": 0.5, "backoff_max": 2.0, "recover_budget": 40.0}
        with driver(fake, clock, auto_recover=False, **options) as modem:
            fake.recover_only_after_reset = True
            fake.full_reset_only = True
            started = time.monotonic()
            assert modem.recover() is True
            assert time.monotonic() - started < 5
            assert fake.count("AT+CFUN=1,1") == 1 and fake.reboots == 1
            assert fake.ptys_created == 2  # a new node behind the same link
            counters = modem.counters()
            assert counters.reopens == 1 and counters.port_errors >= 1
            assert fake.count("ATE0") == 2  # set up again: the reboot turned echo back on
            assert modem.command("AT+CSQ") == ["+CSQ: 22,99"]


def test_recovery_gives_up_after_its_budget_on_the_clock(clock: VirtualClock):
    with FakeModem(QUECTEL_EC25, clock=clock) as fake:
        fast = dict.fromkeys(FAST, 0.05)
        with driver(fake, clock, command_timeout=0.05, timeouts=fast, recover_budget=60.0) as m:
            fake.silent = True
            before = clock.monotonic()
            started = time.monotonic()
            assert m.recover() is False
            assert 60.0 <= clock.monotonic() - before < 60.0 + 36.0
            assert time.monotonic() - started < 3  # the waiting was on the virtual clock
            assert fake.count("AT+CFUN=1,1") == 1
            # A dead modem's snapshot: no exception, everything after the first query skipped.
            status = m.snapshot()
            assert set(status.failed) == {
                "model",
                "signal",
                "registration",
                "operator",
                "iccid",
                "imei",
                "gnss",
                "network_time",
            }
            assert status.failed["imei"].startswith("skipped")
            assert m.counters().recovery_attempts == 2  # the snapshot's first timeout retried


def test_two_threads_never_get_each_others_replies(fake: FakeModem, clock: VirtualClock):
    fake.latency = 0.0005
    fake.urc_storm = True
    expected = {
        "AT+CSQ": ["+CSQ: 22,99"],
        "AT+CGSN": [fake.profile.imei],
        "ATI": list(fake.profile.ati),
    }
    wrong: list[tuple[str, list[str]]] = []
    with driver(fake, clock) as modem:

        def worker(cmd: str) -> None:
            for _ in range(40):
                reply = modem.command(cmd)
                if reply != expected[cmd]:
                    wrong.append((cmd, reply))

        threads = [threading.Thread(target=worker, args=(cmd,)) for cmd in expected]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        assert wrong == []
        assert all(fake.count(cmd) == 40 for cmd in expected)
        assert modem.counters().urcs_ignored == fake.urcs_sent


@pytest.mark.parametrize("stat", [0, 2, 3, 5])
def test_registration_states_reach_the_caller(stat: int, clock: VirtualClock):
    with FakeModem(QUECTEL_EC25, clock=clock) as fake, driver(fake, clock) as modem:
        fake.registration = stat
        reg = modem.registration()
        assert reg.eps is not None and reg.eps.stat == stat
        assert reg.registered is (stat == 5) and reg.roaming is (stat == 5)
        operator = modem.operator()
        assert (operator.name is None) is (stat != 5)
        signal = modem.signal()
        assert (signal.rat is None) is (stat != 5)  # QENG says "SEARCH" without a cell


def test_no_fix_and_a_stopped_gnss_engine(fake: FakeModem, clock: VirtualClock):
    with driver(fake, clock) as modem:
        fake.no_fix = True
        assert modem.gnss_fix() is None
        fake.no_fix = False
        fake.gnss_on = False
        first = modem.gnss_fix()
        assert fake.gnss_on  # the driver started the engine
        if fake.profile.family == "quectel":
            assert fake.count("AT+QGPS=1") == 1 and first is not None  # retried at once
        else:
            assert fake.count("AT+CGPS=1") == 1 and first is None
        assert modem.gnss_fix() is not None


def test_network_time_never_set_is_none(fake: FakeModem, clock: VirtualClock):
    fake.network_time = False
    with driver(fake, clock) as modem:
        assert modem.network_time() is None


def test_closed_or_missing_port_raises_unavailable_and_snapshot_survives(tmp_path: Path):
    modem = SerialModem(str(tmp_path / "ttyUSB9"), clock=VirtualClock(), auto_recover=False)
    with pytest.raises(ModemUnavailable):
        modem.command("AT")
    with pytest.raises(ModemUnavailable):
        modem.open()
    status = modem.snapshot()
    assert status.model is None and "model" in status.failed


def test_driver_module_imports_without_pyserial():
    code = "import sys; sys.modules['serial'] = None; import edge_agent.modem; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


def test_an_idle_fake_modem_sleeps_until_spoken_to(clock: VirtualClock):
    # A replay runs a fake modem per device in one process: idle, it must not wake up at all,
    # and still answer at once when the driver writes.
    with FakeModem(QUECTEL_EC25, clock=clock) as fake, driver(fake, clock) as modem:
        assert fake._thread is not None
        task = Path(f"/proc/self/task/{fake._thread.native_id}/status")

        def switches() -> int:
            lines = task.read_text().splitlines()
            return sum(int(line.split()[1]) for line in lines if "ctxt_switches" in line)

        before = switches()
        time.sleep(0.5)
        assert switches() - before <= 1  # polling every 10 ms woke it 50 times
        real = time.monotonic()
        assert modem.signal().csq == fake.signal.csq
        assert time.monotonic() - real < 0.1
    assert not fake._thread.is_alive()
