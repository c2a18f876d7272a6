"""The classroom device's agent: camera, recorder and spool, cutter, uploader, heartbeat."""
