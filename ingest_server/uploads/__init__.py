"""The upload protocol's parts (DESIGN.md §3), ordered by ``ingest_server.ingest``:
``manifest`` (authentication, pure), ``ledger`` (byte ranges), ``commit`` (the assembled file
and the clip), ``acks`` (what the device is told), ``rejections`` and ``reaper`` (bounds)."""
