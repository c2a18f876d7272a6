"""Code shared by the edge agent and the ingest server: topics, schemas, signing, ranges, time."""
