"""The server's HTTP API: lecturer photos, sessions with verdicts, the fleet, the event feed."""

from ingest_server.api.app import create_app

__all__ = ["create_app"]
