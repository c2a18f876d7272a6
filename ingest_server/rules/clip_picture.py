"""What a proven clip's picture says (DESIGN.md §1.8): a pure rule over what the server's own
decoding found (``rules.clip_proof.DecodedClip``).

* ``video_black`` and ``video_frozen`` (hard): the lens was covered, or nothing in front of it
  moved, so the window shows no class.
* ``clip_other_classroom`` (hard): the picture does not match this classroom's reference view
  (``moved``: the checker sets it only against a view of the classroom's own) but clearly
  matches another classroom's (``ingest_server.view_match``). The clip is signed by the right
  camera and covers the window, so it is that room's footage answered with this room's key:
  proof that this window was not filmed here. Its evidence: the other classroom and the share
  of features that fit its view (``other_match_pct``) and this one's (``own_match_pct``).
* ``clip_resembles_other_classroom`` (warning): the classroom has no reference view of its own
  (lost at installation, an agent reinstalled) and the picture looks like another classroom's.
  Nothing says it is not this room: schools build rooms to one plan and mount cameras alike,
  so an honest room can fit a neighbour's view as well as its own would. A person looks.
  (Not ``camera_moved``: that says the picture left a reference view this room does not have.)
* ``camera_moved`` (warning): the picture matches no classroom's view. A camera knocked
  askew still filmed the class, so it is shown to a person, not held against the session.

The flags are independent, as the checks are: a covered lens also fits no view (black and
moved together). Another classroom's view replaces ``camera_moved``, which says less.
"""

from __future__ import annotations

from collections.abc import Mapping

from ingest_server.rules.clip_proof import DecodedClip
from ingest_server.rules.reasons import ParamValue, Reason, ReasonCode


def _pct(share: float) -> int:
    return round(100 * share)


def picture_reasons(decoded: DecodedClip, params: Mapping[str, ParamValue]) -> list[Reason]:
    """The reasons a proven window's decoded clip gives; ``params`` name the window."""
    reasons = []
    if decoded.black:
        reasons.append(Reason(ReasonCode.VIDEO_BLACK, params))
    if decoded.frozen:
        reasons.append(Reason(ReasonCode.VIDEO_FROZEN, params))
    if decoded.other_classroom:
        evidence = {
            **params,
            "other_classroom": decoded.other_classroom,
            "other_match_pct": _pct(decoded.other_similarity or 0.0),
        }
        if decoded.moved:  # it left a view of this classroom's own
            if decoded.reference_similarity is not None:
                evidence["own_match_pct"] = _pct(decoded.reference_similarity)
            reasons.append(Reason(ReasonCode.CLIP_OTHER_CLASSROOM, evidence))
        else:  # no view of its own to tell it from a look-alike room
            reasons.append(Reason(ReasonCode.CLIP_RESEMBLES_OTHER_CLASSROOM, evidence))
    elif decoded.moved:
        reasons.append(Reason(ReasonCode.CAMERA_MOVED, params))
    return reasons
