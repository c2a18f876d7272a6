"""What people and machines are shown of the evidence: sessions filtered and paged, one
session's evidence whole (clips with their windows, true bounds, hashes and signature status;
photos with time, place and distance to the classroom; the verdict with its reasons and its
history; a timeline of windows, recording gaps and offline periods), statistics, the fleet, and
the per-user "reviewed" mark.

The API routes (``ingest_server.api.evidence``), the dashboard and the export all call these
functions, so that a person, a backend and an auditor see the same facts. Gathering from the
database lives here; what a fact means stays in the pure rules (``ingest_server.rules``), which
this package calls and never copies. Every time is an ISO-8601 UTC string: readers convert to
the deployment's zone.

``listing`` pages and summarises sessions, ``session`` gathers one session whole, ``figures``
counts (statistics, fleet), ``reviews`` keeps the reviewed mark, ``files`` finds stored files,
``blind`` leaves out of reasons the other sessions outside the reader's scope.
"""

from ingest_server.evidence.blind import Reader
from ingest_server.evidence.figures import fleet, statistics
from ingest_server.evidence.files import clip_file, clip_media_type, photo_file
from ingest_server.evidence.listing import (
    VERDICTS,
    BadCursor,
    SessionFilter,
    SessionPage,
    decode_cursor,
    encode_cursor,
    iso_or_none,
    reasons_view,
    session_page,
    session_summary,
)
from ingest_server.evidence.reviews import mark_reviewed, reviewed_by, unmark_reviewed
from ingest_server.evidence.session import (
    VERDICT_CHANGED,
    clip_view,
    photo_view,
    session_evidence,
    session_over,
    session_timeline,
    shown_windows,
    signature_status,
    verdict_history,
)

__all__ = [
    "VERDICTS",
    "VERDICT_CHANGED",
    "BadCursor",
    "Reader",
    "SessionFilter",
    "SessionPage",
    "clip_file",
    "clip_media_type",
    "clip_view",
    "decode_cursor",
    "encode_cursor",
    "fleet",
    "iso_or_none",
    "mark_reviewed",
    "photo_file",
    "photo_view",
    "reasons_view",
    "reviewed_by",
    "session_evidence",
    "session_over",
    "session_page",
    "session_summary",
    "session_timeline",
    "shown_windows",
    "signature_status",
    "statistics",
    "unmark_reviewed",
    "verdict_history",
]
