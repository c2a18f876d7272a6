"""The dashboard's words in Simplified Chinese (the default) and English.

Supervisors at labour bureaus and school staff read Simplified Chinese first, so every page
starts in zh-CN; ``?lang=en`` switches (and a cookie keeps the choice for the next pages).
``Accept-Language`` is not followed: a browser set to English on a bureau's desk must still show
what its colleagues see. Verdict reasons are not here: their sentences come from
``rules.reasons.render`` in the chosen language, so the API and the pages say the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Request

from ingest_server.rules.reasons import DEFAULT_LANGUAGE, LANGUAGES, Lang

LANG_COOKIE = "classcam_lang"
LANG_QUERY = "lang"

# key -> {language: text}. Keep keys grouped by page; every key has both languages (a test
# checks it), and a missing key shows the key itself rather than failing a page.
STRINGS: dict[str, dict[Lang, str]] = {
    # layout
    "app_name": {"zh-CN": "课堂核验", "en": "Class verification"},
    "nav_queue": {"zh-CN": "审核队列", "en": "Review queue"},
    "nav_fleet": {"zh-CN": "设备状态", "en": "Fleet"},
    "nav_statistics": {"zh-CN": "统计", "en": "Statistics"},
    "nav_logout": {"zh-CN": "退出登录", "en": "Log out"},
    "nav_language": {"zh-CN": "English", "en": "中文"},
    "signed_in_as": {"zh-CN": "当前用户", "en": "Signed in as"},
    "role_admin": {"zh-CN": "管理员", "en": "administrator"},
    "role_supervisor": {"zh-CN": "监管人员", "en": "supervisor"},
    "role_institution": {"zh-CN": "培训机构", "en": "institution"},
    "role_lecturer": {"zh-CN": "讲师", "en": "lecturer"},
    "times_in_zone": {"zh-CN": "时间均为 {zone} 时区", "en": "Times are in {zone}"},
    # login
    "login_title": {"zh-CN": "登录", "en": "Sign in"},
    "login_token": {"zh-CN": "访问令牌", "en": "API token"},
    "login_help": {
        "zh-CN": "请粘贴管理员发给您的访问令牌（以 cc_ 开头）。",
        "en": "Paste the API token you were given (it starts with cc_).",
    },
    "login_submit": {"zh-CN": "登录", "en": "Sign in"},
    "login_refused": {
        "zh-CN": "令牌无效、已过期或已被吊销。",
        "en": "The token is unknown, expired or revoked.",
    },
    "logged_out": {"zh-CN": "您已退出登录。", "en": "You are signed out."},
    # errors
    "error_title": {"zh-CN": "无法显示此页面", "en": "This page cannot be shown"},
    "error_401": {"zh-CN": "请先登录。", "en": "Please sign in first."},
    "error_403": {
        "zh-CN": "您的账号无权查看此页面。",
        "en": "Your account may not see this page.",
    },
    "error_403_queue": {
        "zh-CN": "讲师账号不能查看审核队列。",
        "en": "A lecturer's account cannot read the review queue.",
    },
    "error_404": {"zh-CN": "找不到该内容。", "en": "Nothing was found here."},
    "error_409": {
        "zh-CN": "现在无法进行此操作（例如课程尚未结束）。",
        "en": "This cannot be done now (the session may not be over yet).",
    },
    "error_400": {"zh-CN": "请求有误。", "en": "The request is not valid."},
    "error_csrf": {
        "zh-CN": "请求来源不符，已拒绝（请从本站页面提交）。",
        "en": "Refused: the form was not sent from this site's pages.",
    },
    "error_other": {"zh-CN": "服务器出错。", "en": "The server failed."},
    "back_to_queue": {"zh-CN": "返回审核队列", "en": "Back to the review queue"},
    # verdicts
    "verdict_verified": {"zh-CN": "已核验", "en": "Verified"},
    "verdict_rejected": {"zh-CN": "未通过", "en": "Rejected"},
    "verdict_pending": {"zh-CN": "待定", "en": "Pending"},
    # session states
    "state_scheduled": {"zh-CN": "未开始", "en": "Scheduled"},
    "state_open": {"zh-CN": "进行中", "en": "Open"},
    "state_closed": {"zh-CN": "已结束", "en": "Closed"},
    # queue
    "queue_title": {"zh-CN": "审核队列", "en": "Review queue"},
    "filter_from": {"zh-CN": "开始日期", "en": "From"},
    "filter_to": {"zh-CN": "结束日期", "en": "To"},
    "filter_institution": {"zh-CN": "培训机构", "en": "Institution"},
    "filter_classroom": {"zh-CN": "教室", "en": "Classroom"},
    "filter_lecturer": {"zh-CN": "讲师", "en": "Lecturer"},
    "filter_verdict": {"zh-CN": "核验结果", "en": "Verdict"},
    "filter_reviewed": {"zh-CN": "我的审核", "en": "My review"},
    "filter_any": {"zh-CN": "全部", "en": "Any"},
    "filter_reviewed_yes": {"zh-CN": "已审核", "en": "Reviewed"},
    "filter_reviewed_no": {"zh-CN": "未审核", "en": "Not reviewed"},
    "filter_apply": {"zh-CN": "筛选", "en": "Filter"},
    "filter_clear": {"zh-CN": "清除", "en": "Clear"},
    "filter_bad_date": {
        "zh-CN": "日期格式应为 年-月-日，已忽略：{value}",
        "en": "A date is written year-month-day; ignored: {value}",
    },
    "col_start": {"zh-CN": "计划开始", "en": "Scheduled start"},
    "col_class": {"zh-CN": "课程", "en": "Class"},
    "col_institution": {"zh-CN": "机构", "en": "Institution"},
    "col_classroom": {"zh-CN": "教室", "en": "Classroom"},
    "col_lecturer": {"zh-CN": "讲师", "en": "Lecturer"},
    "col_verdict": {"zh-CN": "结果", "en": "Verdict"},
    "col_reasons": {"zh-CN": "原因", "en": "Reasons"},
    "col_reviewed": {"zh-CN": "审核", "en": "Review"},
    "queue_empty": {"zh-CN": "没有符合条件的课程。", "en": "No session matches."},
    "next_page": {"zh-CN": "下一页", "en": "Next page"},
    "first_page": {"zh-CN": "第一页", "en": "First page"},
    "reviewed": {"zh-CN": "已审核", "en": "Reviewed"},
    "mark_reviewed": {"zh-CN": "标记为已审核", "en": "Mark reviewed"},
    "unmark_reviewed": {"zh-CN": "取消审核标记", "en": "Unmark"},
    "more_reasons": {"zh-CN": "另有 {count} 条", "en": "{count} more"},
    # session page
    "session_title": {"zh-CN": "课程记录", "en": "Session"},
    "section_summary": {"zh-CN": "概要", "en": "Summary"},
    "section_verdict": {"zh-CN": "核验结果与原因", "en": "Verdict and reasons"},
    "section_clips": {"zh-CN": "抽检视频", "en": "Spot-check clips"},
    "section_photos": {"zh-CN": "讲师照片", "en": "Lecturer's photos"},
    "section_map": {"zh-CN": "拍摄位置与教室距离", "en": "Where the photos were taken"},
    "section_timeline": {"zh-CN": "时间线", "en": "Timeline"},
    "section_history": {"zh-CN": "结果变更记录", "en": "Verdict history"},
    "section_downloads": {"zh-CN": "导出", "en": "Export"},
    "field_session": {"zh-CN": "课程编号", "en": "Session"},
    "field_state": {"zh-CN": "状态", "en": "State"},
    "field_scheduled": {"zh-CN": "计划时间", "en": "Scheduled"},
    "field_opened": {"zh-CN": "实际开始", "en": "Opened"},
    "field_closed": {"zh-CN": "实际结束", "en": "Closed"},
    "field_recorded": {"zh-CN": "录像时长", "en": "Recorded"},
    "field_reported": {"zh-CN": "设备报告录像时长", "en": "Recorded (camera's report)"},
    "field_clock_offset": {"zh-CN": "设备时钟偏差", "en": "Camera clock offset"},
    "field_device": {"zh-CN": "摄像设备", "en": "Camera"},
    "field_verdict_at": {"zh-CN": "判定时间", "en": "Judged at"},
    "minutes": {"zh-CN": "{value} 分钟", "en": "{value} min"},
    "seconds": {"zh-CN": "{value} 秒", "en": "{value} s"},
    "metres": {"zh-CN": "{value} 米", "en": "{value} m"},
    "no_reasons": {"zh-CN": "无", "en": "None"},
    "reason_evidence": {"zh-CN": "依据", "en": "Evidence"},
    "windows_hidden": {
        "zh-CN": "抽检时段在课程结束后才公开。",
        "en": "The spot-check windows are shown once the session is over.",
    },
    "window_label": {"zh-CN": "第 {index} 段", "en": "Window {index}"},
    "window_span": {"zh-CN": "抽检时段", "en": "Window"},
    "clip_cut": {"zh-CN": "视频实际起止", "en": "Clip covers"},
    "clip_missing": {"zh-CN": "没有可用视频", "en": "No usable clip"},
    "clip_failed": {"zh-CN": "失败原因", "en": "Why it failed"},
    "clip_signature": {"zh-CN": "签名", "en": "Signature"},
    "signature_valid": {"zh-CN": "有效", "en": "valid"},
    "signature_invalid": {"zh-CN": "无效", "en": "invalid"},
    "signature_unknown_device": {"zh-CN": "设备未登记", "en": "unknown device"},
    "clip_sha256": {"zh-CN": "SHA-256", "en": "SHA-256"},
    "clip_duration": {"zh-CN": "时长", "en": "Duration"},
    "clip_check": {"zh-CN": "画面检查", "en": "Picture check"},
    "check_black": {"zh-CN": "全黑", "en": "black"},
    "check_frozen": {"zh-CN": "静止", "en": "frozen"},
    "check_moved": {"zh-CN": "视角变化", "en": "view moved"},
    "check_ok": {"zh-CN": "正常", "en": "normal"},
    "check_pending": {"zh-CN": "尚未检查", "en": "not checked yet"},
    "clip_proof": {"zh-CN": "证明", "en": "Proof"},
    "photo_kind_opening": {"zh-CN": "开课照片", "en": "Opening photo"},
    "photo_kind_closing": {"zh-CN": "结课照片", "en": "Closing photo"},
    "photo_taken": {"zh-CN": "拍摄时间", "en": "Taken"},
    "photo_time_source": {"zh-CN": "时间来源", "en": "Time from"},
    "photo_place": {"zh-CN": "位置", "en": "Place"},
    "photo_place_source": {"zh-CN": "位置来源", "en": "Place from"},
    "photo_distance": {"zh-CN": "距教室", "en": "From the classroom"},
    "photo_within": {"zh-CN": "在范围内", "en": "within range"},
    "photo_outside": {"zh-CN": "超出范围", "en": "out of range"},
    "photo_no_place": {"zh-CN": "无位置信息", "en": "no place"},
    "photo_received": {"zh-CN": "接收时间", "en": "Received"},
    "no_photos": {"zh-CN": "尚无照片。", "en": "No photo yet."},
    "map_classroom": {"zh-CN": "教室", "en": "Classroom"},
    "map_radius": {"zh-CN": "允许范围 {value} 米", "en": "allowed radius {value} m"},
    "map_north": {"zh-CN": "北", "en": "N"},
    "map_scale": {"zh-CN": "比例尺", "en": "Scale"},
    "map_note": {
        "zh-CN": "示意图：以教室为中心，按方位和距离标出照片拍摄位置（不含底图）。",
        "en": "Diagram: the classroom at the centre, photos placed by bearing and distance"
        " (no map tiles).",
    },
    "timeline_scheduled": {"zh-CN": "计划", "en": "Scheduled"},
    "timeline_open": {"zh-CN": "开课至结课", "en": "Opened to closed"},
    "timeline_windows": {"zh-CN": "抽检时段", "en": "Windows"},
    "timeline_gaps": {"zh-CN": "录像中断", "en": "Recording gaps"},
    "timeline_offline": {"zh-CN": "设备离线", "en": "Camera offline"},
    "timeline_photos": {"zh-CN": "照片", "en": "Photos"},
    "timeline_none": {"zh-CN": "无", "en": "none"},
    "history_empty": {"zh-CN": "尚无变更记录。", "en": "No change recorded yet."},
    "download_json": {"zh-CN": "下载证据（JSON）", "en": "Evidence as JSON"},
    "download_export": {"zh-CN": "导出可验证归档", "en": "Verifiable export"},
    "open_video": {"zh-CN": "单独打开视频", "en": "Open the video alone"},
    "open_photo": {"zh-CN": "查看原图", "en": "Full-size photo"},
}


def pick(request: Request) -> Lang:
    """The language of this request: ``?lang=`` first, then the cookie, then zh-CN."""
    for value in (request.query_params.get(LANG_QUERY), request.cookies.get(LANG_COOKIE)):
        if value in LANGUAGES:
            return value
    return DEFAULT_LANGUAGE


class Translator:
    """``t("key", name=value)``: a page's words in one language, with ``{name}`` filled in."""

    def __init__(self, lang: Lang, strings: Mapping[str, Mapping[Lang, str]] = STRINGS) -> None:
        self.lang = lang
        self._strings = strings

    def __call__(self, key: str, **values: object) -> str:
        entry = self._strings.get(key)
        text = entry.get(self.lang, entry.get(DEFAULT_LANGUAGE, key)) if entry else key
        return text.format(**values) if values else text

    def has(self, key: str) -> bool:
        return key in self._strings
