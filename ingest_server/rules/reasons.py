"""Reason codes of a session verdict, and their sentences in zh-CN and English.

Supervisors at labour bureaus and staff at training schools read Simplified Chinese, so zh-CN is
the default and every code has a sentence in both languages (DESIGN.md, "People who read it").
A reason carries raw values in ``params``; ``render`` formats them by the name's suffix:
``*_min`` and ``*_h`` with at most one decimal, ``*_m`` as whole metres, ``*_at`` (ISO-8601
UTC strings) as local time in the deployment's zone, ``kind`` as the localised photo kind.
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from enum import StrEnum
from typing import Literal
from zoneinfo import ZoneInfo

from common.clock import to_utc

Lang = Literal["zh-CN", "en"]
LANGUAGES: tuple[Lang, ...] = ("zh-CN", "en")
DEFAULT_LANGUAGE: Lang = "zh-CN"
DEFAULT_TIMEZONE = ZoneInfo("Asia/Shanghai")

ParamValue = str | int | float


class Severity(StrEnum):
    """What a reason does to the verdict."""

    HARD = "hard"  # the session is rejected
    WARNING = "warning"  # shown to people, does not change the verdict
    PENDING = "pending"  # evidence still awaited: the session cannot be verified yet


class ReasonCode(StrEnum):
    """Every reason a verdict can give. Reasons are listed in this order."""

    # hard
    SHORT_DURATION = "short_duration"
    RECORDING_UNREPORTED = "recording_unreported"
    RECORDING_INCONSISTENT = "recording_inconsistent"
    CLIP_MISSING = "clip_missing"
    CLIP_NOT_RECORDED = "clip_not_recorded"
    CLIP_WRONG_DEVICE = "clip_wrong_device"
    CLIP_WRONG_WINDOW = "clip_wrong_window"
    CLIP_UNREADABLE = "clip_unreadable"
    CLIP_TOO_SHORT = "clip_too_short"
    CLIP_OUTSIDE_WINDOW = "clip_outside_window"
    CLIP_FRAMES_MISMATCH = "clip_frames_mismatch"
    CLIP_DUPLICATE = "clip_duplicate"
    CLIP_CLOCK_MISMATCH = "clip_clock_mismatch"
    VIDEO_BLACK = "video_black"
    VIDEO_FROZEN = "video_frozen"
    CLIP_OTHER_CLASSROOM = "clip_other_classroom"
    PHOTO_MISSING = "photo_missing"
    PHOTO_WRONG_LECTURER = "photo_wrong_lecturer"
    PHOTO_TIME_MISMATCH = "photo_time_mismatch"
    PHOTO_LOCATION_MISSING = "photo_location_missing"
    PHOTO_OUT_OF_RANGE = "photo_out_of_range"
    PHOTO_REUSED = "photo_reused"
    PHOTO_SAME_PICTURE = "photo_same_picture"
    PHOTO_ORDER_INVALID = "photo_order_invalid"
    LECTURER_DOUBLE_BOOKED = "lecturer_double_booked"
    # warnings
    CAMERA_OFFLINE = "camera_offline"
    DEVICE_CLOCK_SKEWED = "device_clock_skewed"
    CAMERA_MOVED = "camera_moved"
    CLIP_RESEMBLES_OTHER_CLASSROOM = "clip_resembles_other_classroom"
    PHOTO_APP_TIME_UNVERIFIED = "photo_app_time_unverified"
    PHOTO_APP_PLACE_UNVERIFIED = "photo_app_place_unverified"
    # pending
    SESSION_IN_PROGRESS = "session_in_progress"
    AWAITING_RECORDING_REPORT = "awaiting_recording_report"
    WINDOWS_NOT_DRAWN = "windows_not_drawn"
    WINDOW_NOT_DUE = "window_not_due"
    CLIP_AWAITED = "clip_awaited"
    PHOTO_AWAITED = "photo_awaited"


_C = ReasonCode
SEVERITY: dict[ReasonCode, Severity] = {
    **{
        code: Severity.HARD
        for code in (
            _C.SHORT_DURATION,
            _C.RECORDING_UNREPORTED,
            _C.RECORDING_INCONSISTENT,
            _C.CLIP_MISSING,
            _C.CLIP_NOT_RECORDED,
            _C.CLIP_WRONG_DEVICE,
            _C.CLIP_WRONG_WINDOW,
            _C.CLIP_UNREADABLE,
            _C.CLIP_TOO_SHORT,
            _C.CLIP_OUTSIDE_WINDOW,
            _C.CLIP_FRAMES_MISMATCH,
            _C.CLIP_DUPLICATE,
            _C.CLIP_CLOCK_MISMATCH,
            _C.VIDEO_BLACK,
            _C.VIDEO_FROZEN,
            _C.CLIP_OTHER_CLASSROOM,
            _C.PHOTO_MISSING,
            _C.PHOTO_WRONG_LECTURER,
            _C.PHOTO_TIME_MISMATCH,
            _C.PHOTO_LOCATION_MISSING,
            _C.PHOTO_OUT_OF_RANGE,
            _C.PHOTO_REUSED,
        )
    },
    _C.CAMERA_OFFLINE: Severity.WARNING,
    _C.CAMERA_MOVED: Severity.WARNING,
    _C.CLIP_RESEMBLES_OTHER_CLASSROOM: Severity.WARNING,
    _C.DEVICE_CLOCK_SKEWED: Severity.WARNING,
    **{
        code: Severity.PENDING
        for code in (
            _C.SESSION_IN_PROGRESS,
            _C.AWAITING_RECORDING_REPORT,
            _C.WINDOWS_NOT_DRAWN,
            _C.WINDOW_NOT_DUE,
            _C.CLIP_AWAITED,
            _C.PHOTO_AWAITED,
        )
    },
}

# Photos: the pair of one session, reuse, the lecturer's whereabouts, typed-in facts.
SEVERITY.update(
    {
        _C.PHOTO_SAME_PICTURE: Severity.HARD,
        _C.PHOTO_ORDER_INVALID: Severity.HARD,
        _C.LECTURER_DOUBLE_BOOKED: Severity.HARD,
        _C.PHOTO_APP_TIME_UNVERIFIED: Severity.WARNING,
        _C.PHOTO_APP_PLACE_UNVERIFIED: Severity.WARNING,
    }
)

_CLIP_ZH = "第 {window_no} 段抽检视频（{window_start_at} 至 {window_end_at}）"
_CLIP_EN = "Spot-check clip {window_no} ({window_start_at} to {window_end_at})"

TEMPLATES: dict[ReasonCode, dict[Lang, str]] = {
    _C.SHORT_DURATION: {
        "zh-CN": "实际上课时长 {recorded_min} 分钟，少于规定的 {preset_min} 分钟"
        "（允许误差 {tolerance_min} 分钟）",
        "en": "Recorded {recorded_min} min of class, less than the required {preset_min} min"
        " (tolerance {tolerance_min} min)",
    },
    _C.RECORDING_UNREPORTED: {
        "zh-CN": "课程应于 {end_at} 结束，设备至今未上报录制结束",
        "en": "The session was due to end at {end_at}, but the camera has not reported the end"
        " of its recording",
    },
    _C.CLIP_CLOCK_MISMATCH: {
        "zh-CN": _CLIP_ZH + "声称设备时钟偏差 {clip_offset_s} 秒，而该设备在本节课的上报中为"
        " {session_offset_s} 秒，二者不符",
        "en": _CLIP_EN + " claims a camera clock offset of {clip_offset_s} s, but the camera"
        " reported {session_offset_s} s during this session",
    },
    _C.RECORDING_INCONSISTENT: {
        "zh-CN": "服务器按设备上报的开始、结束与中断算得录制 {computed_min} 分钟，"
        "设备自报 {reported_min} 分钟，相差超过 {limit_min} 分钟",
        "en": "The camera's start, stop and gap reports add up to {computed_min} min of"
        " recording, but the camera reported {reported_min} min: more than {limit_min} min apart",
    },
    _C.CLIP_MISSING: {
        "zh-CN": _CLIP_ZH + "在首次索取后 {waited_h} 小时（设备在线时间）仍未上传",
        "en": _CLIP_EN + " has still not arrived {waited_h} h (of camera online time) after it"
        " was first requested",
    },
    _C.CLIP_NOT_RECORDED: {
        "zh-CN": _CLIP_ZH + "无法截取：设备报告该时段没有录像（{detail}）",
        "en": _CLIP_EN + " cannot be cut: the camera reports no recording of it ({detail})",
    },
    _C.CLIP_WRONG_DEVICE: {
        "zh-CN": _CLIP_ZH + "来自设备 {device_id}，而不是本教室安装的设备 {installed_device_id}",
        "en": _CLIP_EN + " came from device {device_id}, not from {installed_device_id}, the"
        " camera installed in this classroom",
    },
    _C.CLIP_WRONG_WINDOW: {
        "zh-CN": _CLIP_ZH + "的签名清单对应的是另一条指令（{cmd_id}）",
        "en": _CLIP_EN + "'s signed manifest answers another command ({cmd_id})",
    },
    _C.CLIP_UNREADABLE: {
        "zh-CN": _CLIP_ZH + "无法解码，不是有效视频（{detail}）",
        "en": _CLIP_EN + " cannot be decoded as video ({detail})",
    },
    _C.CLIP_TOO_SHORT: {
        "zh-CN": _CLIP_ZH + "只有 {clip_s} 秒，抽检时段为 {window_s} 秒",
        "en": _CLIP_EN + " lasts only {clip_s} s of the {window_s} s window",
    },
    _C.CLIP_OUTSIDE_WINDOW: {
        "zh-CN": _CLIP_ZH + "实际录制于 {clip_start_at} 至 {clip_end_at}（按设备时钟偏差"
        " {clock_offset_s} 秒换算），仅覆盖抽检时段的 {covered_pct}%，要求至少 {required_pct}%",
        "en": _CLIP_EN + " was recorded from {clip_start_at} to {clip_end_at} (device clock"
        " offset {clock_offset_s} s applied) and covers only {covered_pct}% of the window;"
        " at least {required_pct}% is required",
    },
    _C.CLIP_FRAMES_MISMATCH: {
        "zh-CN": _CLIP_ZH
        + "解码得到 {frames} 帧、{decoded_s} 秒（{fps} 帧/秒，应约 {expected_frames}"
        " 帧），设备声称 {stated_s} 秒，二者不符",
        "en": _CLIP_EN + " decodes to {frames} frames over {decoded_s} s at {fps} fps (about"
        " {expected_frames} expected) while the camera states {stated_s} s: they do not fit",
    },
    _C.CLIP_DUPLICATE: {
        "zh-CN": _CLIP_ZH + "与已用于 {other_window} 的视频完全相同",
        "en": _CLIP_EN + " is byte for byte the clip already given for {other_window}",
    },
    _C.VIDEO_BLACK: {
        "zh-CN": _CLIP_ZH + "画面全黑",
        "en": _CLIP_EN + " is black",
    },
    _C.VIDEO_FROZEN: {
        "zh-CN": _CLIP_ZH + "画面静止不动",
        "en": _CLIP_EN + " shows a frozen picture",
    },
    _C.CLIP_OTHER_CLASSROOM: {
        "zh-CN": _CLIP_ZH + "拍的是另一间教室（{other_classroom}）：画面特征点与该教室的参考画面"
        "吻合 {other_match_pct}%",
        "en": _CLIP_EN + " shows another classroom ({other_classroom}): {other_match_pct}% of"
        " its features fit that classroom's reference view",
    },
    _C.PHOTO_MISSING: {
        "zh-CN": "截至 {deadline_at} 未上传{kind}照片",
        "en": "No {kind} photo was uploaded by {deadline_at}",
    },
    _C.PHOTO_WRONG_LECTURER: {
        "zh-CN": "{kind}照片不是本课程的讲师上传的",
        "en": "The {kind} photo was not uploaded by this session's lecturer",
    },
    _C.PHOTO_TIME_MISMATCH: {
        "zh-CN": "{kind}照片拍摄于 {taken_at}，与{kind}时间 {reference_at} 相差 {delta_min} 分钟，"
        "超过允许的 {tolerance_min} 分钟",
        "en": "The {kind} photo was taken at {taken_at}, {delta_min} min from the session's"
        " {kind} at {reference_at}, more than the allowed {tolerance_min} min",
    },
    _C.PHOTO_LOCATION_MISSING: {
        "zh-CN": "{kind}照片没有拍摄地点信息",
        "en": "The {kind} photo has no location",
    },
    _C.PHOTO_OUT_OF_RANGE: {
        "zh-CN": "{kind}照片的拍摄地点距教室 {distance_m} 米，超出 {radius_m} 米范围",
        "en": "The {kind} photo was taken {distance_m} m from the classroom, beyond the"
        " {radius_m} m limit",
    },
    _C.PHOTO_REUSED: {
        "zh-CN": "{kind}照片与课程 {other_session} 先前收到的照片相同或几乎相同",
        "en": "The {kind} photo is the same, or nearly the same, as the photo of session"
        " {other_session} received earlier",
    },
    _C.CAMERA_OFFLINE: {
        "zh-CN": "上课期间设备离线 {offline_min} 分钟，超过 {limit_min} 分钟",
        "en": "The camera was offline for {offline_min} min during the session, more than"
        " {limit_min} min",
    },
    _C.DEVICE_CLOCK_SKEWED: {
        "zh-CN": "设备时钟偏差 {clock_offset_s} 秒（设备时间减服务器时间），已按服务器时间换算",
        "en": "The camera's clock was {clock_offset_s} s off (camera minus server time);"
        " its times were converted to server time",
    },
    _C.CAMERA_MOVED: {
        "zh-CN": _CLIP_ZH + "与教室参考画面不符，摄像头可能被移动或调换",
        "en": _CLIP_EN + " does not match the classroom's reference view; the camera may have"
        " been moved or swapped",
    },
    _C.CLIP_RESEMBLES_OTHER_CLASSROOM: {
        "zh-CN": _CLIP_ZH + "看起来像另一间教室（{other_classroom}）：画面特征点与该教室的参考画面"
        "吻合 {other_match_pct}%；本教室没有参考画面可供核对，请人工查看",
        "en": _CLIP_EN + " looks like another classroom ({other_classroom}): {other_match_pct}%"
        " of its features fit that classroom's reference view; this classroom has no reference"
        " view to compare with, so a person should look",
    },
    _C.SESSION_IN_PROGRESS: {
        "zh-CN": "课程尚未结束（预计 {end_at} 结束）",
        "en": "The session has not ended yet (due to end at {end_at})",
    },
    _C.AWAITING_RECORDING_REPORT: {
        "zh-CN": "等待设备上报录制结束",
        "en": "Waiting for the camera to report the end of its recording",
    },
    _C.WINDOWS_NOT_DRAWN: {
        "zh-CN": "尚未抽取抽检时段",
        "en": "The spot-check windows have not been drawn yet",
    },
    _C.WINDOW_NOT_DUE: {
        "zh-CN": "第 {window_no} 段抽检时段尚未结束",
        "en": "Spot-check window {window_no} has not passed yet",
    },
    _C.CLIP_AWAITED: {
        "zh-CN": "等待" + _CLIP_ZH + "上传",
        "en": "Waiting for spot-check clip {window_no} ({window_start_at} to {window_end_at})"
        " to arrive",
    },
    _C.PHOTO_AWAITED: {
        "zh-CN": "等待上传{kind}照片（截止 {deadline_at}）",
        "en": "Waiting for the {kind} photo (until {deadline_at})",
    },
}

TEMPLATES.update(
    {
        _C.PHOTO_SAME_PICTURE: {
            "zh-CN": "开课照片与结课照片是同一张照片（相差 {distance_bits} 位）",
            "en": "The opening and closing photos are the same picture ({distance_bits} bits"
            " apart)",
        },
        _C.PHOTO_ORDER_INVALID: {
            "zh-CN": "开课照片拍摄于 {opening_at}，结课照片拍摄于 {closing_at}，相隔 {gap_min}"
            " 分钟，与课程时长 {expected_min} 分钟不符（允许误差 {tolerance_min} 分钟）",
            "en": "The opening photo was taken at {opening_at} and the closing photo at"
            " {closing_at}, {gap_min} min apart, not the class length of {expected_min} min"
            " (tolerance {tolerance_min} min)",
        },
        _C.LECTURER_DOUBLE_BOOKED: {
            "zh-CN": "{conflict_at} 讲师同时出现在教室 {other_classroom} 的课程 {other_session}"
            "（相距 {distance_m} 米）",
            "en": "At {conflict_at} the lecturer was also in session {other_session} in"
            " classroom {other_classroom}, {distance_m} m away",
        },
        _C.PHOTO_APP_TIME_UNVERIFIED: {
            "zh-CN": "{kind}照片的拍摄时间 {taken_at} 是在应用中填写的，照片 {received_at} 才收到"
            "（相隔 {delay_min} 分钟，超过 {window_min} 分钟），时间未经核实",
            "en": "The {kind} photo's time, {taken_at}, was typed into the app and the photo"
            " arrived at {received_at}, {delay_min} min apart (more than {window_min} min):"
            " the time is unverified",
        },
        _C.PHOTO_APP_PLACE_UNVERIFIED: {
            "zh-CN": "{kind}照片的拍摄地点是在应用中填写的，照片 {received_at} 才收到（与拍摄时间"
            "相隔 {delay_min} 分钟，超过 {window_min} 分钟），地点未经核实",
            "en": "The {kind} photo's place was typed into the app and the photo arrived at"
            " {received_at}, {delay_min} min from when it was taken (more than {window_min}"
            " min): the place is unverified",
        },
    }
)

# The sentences of reasons shown blind: the other session they name is outside the reader's
# scope, so its params are left out (``evidence.blind``) and the sentence says only that there
# is one. ``render`` takes these when a param the usual sentence quotes is missing.
BLIND_TEMPLATES: dict[ReasonCode, dict[Lang, str]] = {
    _C.PHOTO_REUSED: {
        "zh-CN": "{kind}照片与您查看范围之外的另一课程先前收到的照片相同或几乎相同",
        "en": "The {kind} photo is the same, or nearly the same, as a photo received earlier"
        " for another session, outside what you may see",
    },
    _C.LECTURER_DOUBLE_BOOKED: {
        "zh-CN": "{conflict_at} 讲师同时出现在您查看范围之外的另一课程（相距 {distance_m} 米）",
        "en": "At {conflict_at} the lecturer was also in another session, outside what you may"
        " see, {distance_m} m away",
    },
    _C.CLIP_DUPLICATE: {
        "zh-CN": _CLIP_ZH + "与已用于您查看范围之外的另一课程的视频完全相同",
        "en": _CLIP_EN + " is byte for byte a clip already given for another session, outside"
        " what you may see",
    },
}

# Values of ``kind`` as each language says them inside a sentence.
_KIND_WORDS: dict[Lang, dict[str, str]] = {
    "zh-CN": {"opening": "开课", "closing": "结课"},
    "en": {"opening": "opening", "closing": "closing"},
}


@dataclass(frozen=True)
class Reason:
    """One reason of a verdict: a code and the values its sentence quotes."""

    code: ReasonCode
    params: Mapping[str, ParamValue] = field(default_factory=dict)

    @property
    def severity(self) -> Severity:
        """Hard, warning or pending (``SEVERITY``)."""
        return SEVERITY[self.code]

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready form, for the event feed and the API."""
        return {"code": str(self.code), "severity": str(self.severity), "params": dict(self.params)}


def template_fields(template: str) -> set[str]:
    """The parameter names a template quotes."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def pick_language(accept_language: str | None) -> Lang:
    """The language to answer in for an ``Accept-Language`` header.

    Highest q first (ties in header order); any ``zh`` tag gives zh-CN (we write only
    Simplified Chinese, which zh-TW/zh-HK readers read better than English), any ``en`` tag
    gives en; ``*``, nothing usable or no header gives the default, zh-CN.
    """
    if not accept_language:
        return DEFAULT_LANGUAGE
    ranked = []
    for position, part in enumerate(accept_language.split(",")):
        tag, *params = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0  # a malformed weight: ignore the entry rather than guess
        if tag and quality > 0:
            ranked.append((-quality, position, tag.lower()))
    for _, _, tag in sorted(ranked):
        primary = tag.split("-")[0]
        if primary == "zh":
            return "zh-CN"
        if primary == "en":
            return "en"
        if tag == "*":
            return DEFAULT_LANGUAGE
    return DEFAULT_LANGUAGE


def format_number(value: float, decimals: int = 1) -> str:
    """At most ``decimals`` decimals, no trailing zeros: 45.0 → "45", 44.96 → "45", 2.5 → "2.5"."""
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _format_param(name: str, value: ParamValue, lang: Lang, tz: tzinfo) -> str:
    if name == "kind":
        return _KIND_WORDS[lang].get(str(value), str(value))
    if name.endswith("_at") and isinstance(value, str):
        return datetime.fromisoformat(value).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if name.endswith(("_min", "_h")):
        return format_number(value)
    if name.endswith("_m"):
        return str(round(value))
    return format_number(value) if isinstance(value, float) else str(value)


def render(reason: Reason, lang: str = DEFAULT_LANGUAGE, *, tz: tzinfo = DEFAULT_TIMEZONE) -> str:
    """The sentence for ``reason`` in ``lang`` (a language tag or an Accept-Language value)."""
    chosen = pick_language(lang)  # "zh-CN" and "en" map to themselves
    template = TEMPLATES[reason.code][chosen]
    if reason.code in BLIND_TEMPLATES and not template_fields(template) <= reason.params.keys():
        template = BLIND_TEMPLATES[reason.code][chosen]
    values = {
        name: _format_param(name, reason.params[name], chosen, tz)
        for name in template_fields(template)
    }
    return template.format(**values)


def floor1(value: float) -> float:
    # Shortfalls are rounded down and excesses up, so a sentence never reads "45 < 45".
    return math.floor(round(value * 10, 6)) / 10


def ceil1(value: float) -> float:
    return math.ceil(round(value * 10, 6)) / 10


def iso_utc(value: datetime) -> str:
    return to_utc(value).isoformat()
