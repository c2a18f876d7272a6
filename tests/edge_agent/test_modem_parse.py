"""AT reply parsers, table-tested on replies as Quectel EC2x and SIMCom SIM7600 print them."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from edge_agent.modem_parse import (
    ParseError,
    RegStatus,
    backoff_delay,
    combine_registration,
    csq_to_dbm,
    decode_line,
    final_result,
    is_unsolicited,
    nmea_to_degrees,
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
    reply_prefixes,
    take_lines,
)


@pytest.mark.parametrize(
    ("index", "dbm"), [(0, -113), (1, -111), (2, -109), (15, -83), (30, -53), (31, -51), (99, None)]
)
def test_csq_index_to_dbm_per_27007(index, dbm):
    assert csq_to_dbm(index) == dbm


@pytest.mark.parametrize(
    ("payload", "csq", "dbm", "ber"),
    [
        ("22,99", 22, -69, None),
        ("31,0", 31, -51, 0),
        ("99,99", None, None, None),
        (" 7, 3", 7, -99, 3),
    ],
)
def test_parse_csq(payload, csq, dbm, ber):
    info = parse_csq(payload)
    assert (info.csq, info.rssi_dbm, info.ber) == (csq, dbm, ber)


@pytest.mark.parametrize("payload", ["", "22", "a,b"])
def test_parse_csq_rejects_nonsense(payload):
    with pytest.raises(ParseError):
        parse_csq(payload)


@pytest.mark.parametrize(
    ("payload", "stat", "status", "area", "cell", "act"),
    [
        ("0,1", 1, RegStatus.HOME, None, None, None),
        ("0,5", 5, RegStatus.ROAMING, None, None, None),
        ("2,2", 2, RegStatus.SEARCHING, None, None, None),
        ("0,3", 3, RegStatus.DENIED, None, None, None),
        ("0,0", 0, RegStatus.NOT_REGISTERED, None, None, None),
        ("0,4", 4, RegStatus.UNKNOWN, None, None, None),
        ('2,1,"5A1B","0C8A1B02",7', 1, RegStatus.HOME, "5A1B", "0C8A1B02", 7),
        ('2,5,"6C2E","0B28A3BC",7', 5, RegStatus.ROAMING, "6C2E", "0B28A3BC", 7),
        ("0,6", 6, RegStatus.HOME, None, None, None),  # registered home, SMS only
    ],
)
def test_parse_creg_cereg_replies(payload, stat, status, area, cell, act):
    state = parse_reg(payload)
    assert (state.stat, state.status, state.area, state.cell_id, state.act) == (
        stat,
        status,
        area,
        cell,
        act,
    )


def test_parse_reg_refuses_the_urc_form():
    with pytest.raises(ParseError):
        parse_reg("1")
    with pytest.raises(ParseError):
        parse_reg('1,"5A1B","0C8A1B02",7')


@pytest.mark.parametrize(
    ("line", "command", "urc"),
    [
        ("+CREG: 1", "AT+CREG?", True),  # URC: <stat>
        ("+CREG: 0,1", "AT+CREG?", False),  # reply: <n>,<stat>
        ('+CREG: 1,"5A1B","0C8A1B02",7', "AT+CREG?", True),  # URC with location, n=2
        ('+CREG: 2,1,"5A1B","0C8A1B02",7', "AT+CREG?", False),
        ("+CEREG: 5", "AT+CEREG?", True),
        ("+CEREG: 0,5", "AT+CEREG?", False),
        ("+CEREG: 0,1", "AT+CREG?", True),  # another command's name is never our reply
        ("+CSQ: 22,99", "AT+CSQ", False),
        ("+CPIN: READY", "AT+CSQ", True),
        ("+CPIN: READY", "AT+CPIN?", False),
        ('+QIND: "csq",22,99', "AT+CSQ", True),
        ('+QGPSURC: "day"', "AT+QGPSLOC=2", True),
        (
            "+QGPSLOC: 023756.000,31.23042,121.47370,0.9,12.4,3,0.00,0.0,0.0,150324,09",
            "AT+QGPSLOC=2",
            False,
        ),
        ("+CGEV: ME PDN ACT 1", "AT+COPS?", True),
        ("RDY", "AT", True),
        ("RING", "AT+CSQ", True),
        ("SMS DONE", "ATI", True),
        ("861107034512345", "AT+CGSN", False),  # bare information text
        ("Quectel", "ATI", False),
        ("+GCAP: +CGSM", "ATI", False),  # SIMCom's ATI ends with it
        ("+ICCID: 8986031945204789123F", "AT+CICCID", False),
        ("+CFUN: 1", "AT+CFUN=1,1", True),  # after a reset, not an answer to the write
        ("+CFUN: 1", "AT+CFUN?", False),
        ("+CSQ: 22,99", None, True),  # nothing waiting: everything is unsolicited
    ],
)
def test_urcs_are_told_from_replies(line, command, urc):
    assert is_unsolicited(line, command) is urc


@pytest.mark.parametrize(
    ("command", "prefixes"),
    [
        ("AT+CSQ", ("+CSQ:",)),
        ("AT+CREG?", ("+CREG:",)),
        ('AT+QENG="servingcell"', ("+QENG:",)),
        ("AT+CICCID", ("+ICCID:",)),
        ("AT+CFUN=0", ()),
        ("AT", ()),
        ("ATE0", ()),
    ],
)
def test_reply_prefixes(command, prefixes):
    assert reply_prefixes(command) == prefixes


@pytest.mark.parametrize(
    ("line", "verdict"),
    [
        ("OK", "ok"),
        ("ERROR", "error"),
        ("+CME ERROR: 516", "error"),
        ("+CME ERROR: Not fixed now", "error"),
        ("+CMS ERROR: 500", "error"),
        ("+CSQ: 22,99", None),
        ("OKAY", None),
    ],
)
def test_final_result_codes(line, verdict):
    assert final_result(line) == verdict


def test_registration_combines_both_domains():
    lte_only = combine_registration(parse_reg("0,0"), parse_reg("0,1"))
    assert (lte_only.status, lte_only.registered, lte_only.roaming) == (RegStatus.HOME, True, False)
    roaming = combine_registration(None, parse_reg("0,5"))
    assert (roaming.status, roaming.registered, roaming.roaming) == (RegStatus.ROAMING, True, True)
    searching = combine_registration(parse_reg("0,0"), parse_reg("0,2"))
    assert (searching.status, searching.registered) == (RegStatus.SEARCHING, False)
    denied = combine_registration(parse_reg("0,3"), None)
    assert denied.status is RegStatus.DENIED
    with pytest.raises(ParseError):
        combine_registration(None, None)


@pytest.mark.parametrize(
    ("payload", "name", "fmt", "tech"),
    [
        ('0,0,"CHINA MOBILE",7', "CHINA MOBILE", "long", "LTE"),
        ('0,0,"CHN-CT",7', "CHN-CT", "long", "LTE"),
        ('0,2,"46000",7', "46000", "numeric", "LTE"),
        ('1,1,"CMCC",0', "CMCC", "short", "GSM"),
        ('0,0,"CHN-UNICOM",9', "CHN-UNICOM", "long", "NB-IoT"),
        ("0", None, None, None),  # not registered
    ],
)
def test_parse_cops(payload, name, fmt, tech):
    op = parse_cops(payload)
    assert (op.name, op.name_format, op.technology) == (name, fmt, tech)


def test_qeng_servingcell_lte_line():
    extra = parse_qeng_servingcell(
        '"servingcell","NOCONN","LTE","FDD",460,00,C8A1B02,123,1650,3,5,5,5A1B,-92,-9,-63,14,40'
    )
    assert extra == {
        "rat": "LTE",
        "cell_id": "C8A1B02",
        "band": "B3",
        "rsrp_dbm": -92.0,
        "rsrq_db": -9.0,
        "sinr_db": 14.0,
    }


def test_qeng_servingcell_negative_sinr_and_trailing_fields():
    extra = parse_qeng_servingcell(
        '"servingcell","NOCONN","LTE","FDD",405,854,49E31,91,2450,5,3,3,74,-124,-16,-91,-5,3,-32768,27'
    )
    assert (extra["rsrp_dbm"], extra["rsrq_db"], extra["sinr_db"]) == (-124.0, -16.0, -5.0)


@pytest.mark.parametrize("payload", ['"servingcell","SEARCH"', '"servingcell","LIMSRV"'])
def test_qeng_servingcell_without_a_cell(payload):
    assert parse_qeng_servingcell(payload) == {}


def test_qeng_other_rat_gives_only_the_rat():
    assert (
        parse_qeng_servingcell('"servingcell","NOCONN","WCDMA",460,01,1A2B,C3D4,10700')["rat"]
        == "WCDMA"
    )


def test_cpsi_lte_in_tenths():
    extra = parse_cpsi(
        "LTE,Online,404-45,0x21F9,322642,453,EUTRAN-BAND40,39275,4,4,-168,-1126,-773,7"
    )
    assert extra == {
        "rat": "LTE",
        "cell_id": "322642",
        "band": "B40",
        "rsrq_db": -16.8,
        "rsrp_dbm": -112.6,
        "sinr_db": 7.0,
    }
    assert parse_cpsi("NO SERVICE,Online") == {}
    assert parse_cpsi("GSM,Online,460-00,0x1816,6527,37 EGSM900,-71,0,32-32")["rat"] == "GSM"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ('"24/03/15,10:23:45+32"', datetime(2024, 3, 15, 2, 23, 45, tzinfo=UTC)),  # UTC+8
        ('"24/03/15,01:00:00+32"', datetime(2024, 3, 14, 17, 0, 0, tzinfo=UTC)),  # across midnight
        ('"24/03/15,10:23:45-16"', datetime(2024, 3, 15, 14, 23, 45, tzinfo=UTC)),  # UTC-4
        ('"25/01/01,00:00:00+00"', datetime(2025, 1, 1, tzinfo=UTC)),
        ('"24/07/01,12:00:00+22"', datetime(2024, 7, 1, 6, 30, tzinfo=UTC)),  # UTC+5:30
        ('"80/01/06,00:00:12+00"', None),  # Quectel power-on default: never set by the network
        ('"04/01/01,00:00:20+00"', None),  # SIMCom power-on default
    ],
)
def test_cclk_to_utc(payload, expected):
    assert parse_cclk(payload) == expected


@pytest.mark.parametrize("payload", ['"24/13/15,10:23:45+32"', "garbage"])
def test_cclk_rejects_bad_times(payload):
    with pytest.raises(ParseError):
        parse_cclk(payload)


def test_qlts_local_time_to_utc():
    assert parse_qlts('"2024/03/15,10:23:45+32,0"') == datetime(2024, 3, 15, 2, 23, 45, tzinfo=UTC)
    assert parse_qlts('""') is None


def test_qgpsloc_mode_2():
    fix = parse_qgpsloc("023756.000,31.23042,121.47370,0.9,12.4,3,0.00,0.0,0.0,150324,09")
    assert (fix.latitude, fix.longitude, fix.altitude_m, fix.hdop, fix.satellites) == (
        31.23042,
        121.4737,
        12.4,
        0.9,
        9,
    )
    assert fix.utc == datetime(2024, 3, 15, 2, 37, 56, tzinfo=UTC)
    assert fix.datum == "wgs84"
    south_west = parse_qgpsloc("120000.000,-33.85678,-70.64827,1.2,520.0,3,0.00,0.0,0.0,010124,06")
    assert (south_west.latitude, south_west.longitude) == (-33.85678, -70.64827)


@pytest.mark.parametrize(
    ("value", "hemisphere", "degrees"),
    [
        ("3113.343286", "N", 31 + 13.343286 / 60),
        ("3113.343286", "S", -(31 + 13.343286 / 60)),
        ("12121.234064", "E", 121 + 21.234064 / 60),
        ("07038.896200", "W", -(70 + 38.8962 / 60)),
        ("0000.000000", "N", 0.0),
    ],
)
def test_nmea_to_degrees(value, hemisphere, degrees):
    assert nmea_to_degrees(value, hemisphere) == pytest.approx(degrees, abs=1e-9)


def test_nmea_rejects_bad_minutes_and_hemispheres():
    with pytest.raises(ParseError):
        nmea_to_degrees("3175.0", "N")
    with pytest.raises(ParseError):
        nmea_to_degrees("3113.0", "X")


def test_cgpsinfo_fix_and_no_fix():
    fix = parse_cgpsinfo("3039.438000,N,10403.948000,E,150324,023756.0,498.6,10.0,90.5")
    assert fix is not None
    assert fix.latitude == pytest.approx(30.6573, abs=1e-6)
    assert fix.longitude == pytest.approx(104.0658, abs=1e-6)
    assert fix.altitude_m == 498.6
    assert fix.speed_kmh == pytest.approx(18.52)
    assert fix.utc == datetime(2024, 3, 15, 2, 37, 56, tzinfo=UTC)
    assert parse_cgpsinfo(",,,,,,,,") is None
    southern = parse_cgpsinfo("3351.406800,S,15112.574400,E,010124,000000.0,20.0,0.0,0.0")
    assert southern is not None and southern.latitude < 0 < southern.longitude


def test_model_detection():
    quectel = parse_model(["Quectel", "EC25", "Revision: EC25EFAR06A03M4G"])
    assert (quectel.family, quectel.model, quectel.revision) == (
        "quectel",
        "EC25",
        "EC25EFAR06A03M4G",
    )
    simcom = parse_model(
        [
            "Manufacturer: SIMCOM INCORPORATED",
            "Model: SIMCOM_SIM7600G-H",
            "Revision: SIM7600M22_V2.0.1",
            "IMEI: 868822041234567",
            "+GCAP: +CGSM",
        ]
    )
    assert (simcom.family, simcom.model) == ("simcom", "SIMCOM_SIM7600G-H")
    assert parse_model(["Fibocom", "L610"]).family == "generic"


@pytest.mark.parametrize(
    ("lines", "iccid"),
    [
        (["+QCCID: 89860012345678901234"], "89860012345678901234"),
        (["+ICCID: 8986031945204789123F"], "8986031945204789123"),
        (['+CCID: "89860012345678901234"'], "89860012345678901234"),
        (["89860012345678901234"], "89860012345678901234"),
    ],
)
def test_parse_iccid(lines, iccid):
    assert parse_iccid(lines) == iccid


def test_parse_imei():
    assert parse_imei(["861107034512345"]) == "861107034512345"
    assert parse_imei(['+CGSN: "868822041234567"']) == "868822041234567"
    with pytest.raises(ParseError):
        parse_imei(["12345"])


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"+CSQ: 22,99", "+CSQ: 22,99"),
        (b"  OK ", "OK"),
        ('+COPS: 0,0,"中国移动",7'.encode(), '+COPS: 0,0,"中国移动",7'),
        (b"+C\xffSQ", None),
        (b"+CSQ\x00: 2", None),
        (b"\xe4\xb8", None),  # truncated UTF-8
    ],
)
def test_decode_line(raw, text):
    assert decode_line(raw) == text


def test_take_lines_keeps_the_unfinished_tail():
    buffer = bytearray(b"AT+CSQ\r\r\n+CSQ: 22,99\r\n\r\nOK\r\n\r\n+CRE")
    assert take_lines(buffer) == [b"AT+CSQ", b"+CSQ: 22,99", b"OK"]
    assert buffer == b"+CRE"


def test_backoff_is_exponential_capped_and_jittered():
    rng = random.Random(1)
    delays = [backoff_delay(n, 1.0, 30.0, rng) for n in range(8)]
    for n, delay in enumerate(delays):
        base = min(30.0, 2.0**n)
        assert 0.8 * base <= delay <= min(30.0, 1.2 * base)
    assert max(delays) <= 30.0
