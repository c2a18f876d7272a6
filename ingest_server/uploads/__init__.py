"""The upload protocol's parts (DESIGN.md §3): refusals kept bounded, stale uploads reaped."""
