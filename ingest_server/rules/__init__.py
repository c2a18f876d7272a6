"""Which evidence proves what: pure rules over plain data (DESIGN.md §3).

Nothing here reads the database, the clock or the network. ``ingest_server.facts`` gathers the
facts, ``ingest_server.verdicts`` calls these rules and stores what they decide.
"""
