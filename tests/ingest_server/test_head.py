"""HEAD of every page and API read (``api.head``): the GET's status and headers with no body,
the GET's authentication and scope applied first, and no viewing or export in the audit log."""
# ruff: noqa: F811  (``world`` is the evidence API's fixture, imported to be used by name)

from __future__ import annotations

from sqlalchemy import func, select
from test_evidence_api import World, world  # noqa: F401

from ingest_server.models import AuditEntry

PAGES = [
    "/ui/queue",
    "/ui/sessions/s-a1-0",
    "/ui/sessions/s-a1-0/evidence.json",
    "/ui/fleet",
    "/ui/statistics",
    "/ui/login",
    "/api/v1/sessions",
    "/api/v1/sessions/s-a1-0",
    "/api/v1/sessions/no-such",
    "/api/v1/devices",
    "/api/v1/statistics",
    "/api/v1/sessions/s-a1-0/export",
]


def _shown_rows(world: World) -> int:
    with world.context.session_factory() as db:
        query = select(func.count()).where(AuditEntry.action.in_(["viewed", "exported"]))
        return int(db.scalar(query) or 0)


def test_head_answers_as_get_without_body_or_audit(world: World) -> None:
    for who in ("admin", "inst-a", "inst-b", "la2"):
        client = world.client(who)
        for path in PAGES:
            before = _shown_rows(world)
            head = client.head(path)
            assert _shown_rows(world) == before, (who, path, "a HEAD shows no evidence")
            get = client.get(path)
            assert head.status_code == get.status_code != 405, (who, path, head.status_code)
            assert head.content == b"", (who, path)
            assert head.headers["content-type"] == get.headers["content-type"], (who, path)
            if path.startswith("/api/") and not path.endswith("/export"):
                # JSON reads answer the same bytes twice: the length a GET would send.
                assert int(head.headers["content-length"]) == len(get.content), (who, path)
    # Scope first: another school's session, and a lecturer's look at a school's queue.
    assert world.client("inst-b").head("/ui/sessions/s-a1-0").status_code == 403
    assert world.client("inst-b").head("/api/v1/sessions/s-a1-0").status_code == 403
    assert world.client("la2").head("/ui/queue").status_code == 403
    assert world.client("inst-b").head("/api/v1/sessions/s-a1-0/export").status_code == 403
    # And authentication: no token, no answer (the page sends the browser to sign in).
    anonymous = world.client("admin")
    anonymous.headers.pop("Authorization")
    assert anonymous.head("/api/v1/sessions").status_code == 401
    assert anonymous.head("/ui/queue", follow_redirects=False).status_code in (302, 303, 307)
    # A GET of the same session is recorded: the HEADs above were not merely unaudited routes.
    before = _shown_rows(world)
    assert world.client("inst-a").get("/api/v1/sessions/s-a1-0").status_code == 200
    assert _shown_rows(world) == before + 1


def test_head_routes_stay_out_of_the_openapi_document(world: World) -> None:
    document = world.client("admin").get("/api/openapi.json").json()
    methods = {method for item in document["paths"].values() for method in item}
    assert "get" in methods and "head" not in methods
