"""Simulated parts for tests, the demo and ops replays: brokers, cameras, modems, phones."""
