"""How hard the property and fuzz tests try: a bounded number of examples in ``make test``,
many more in ``make fuzz`` (``CLASSCAM_FUZZ_EXAMPLES`` examples per test and per API route)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ_ENV = "CLASSCAM_FUZZ_EXAMPLES"


def fuzz_examples() -> int:
    """Examples per test asked for by ``make fuzz`` (0: the suite's own bounded numbers)."""
    try:
        return max(0, int(os.environ.get(FUZZ_ENV, "0")))
    except ValueError:
        return 0


def examples(bounded: int, share: float = 1.0) -> int:
    """``bounded`` in the suite; in a fuzz run ``share`` of ``CLASSCAM_FUZZ_EXAMPLES`` (the API
    fuzz, run for every operation, mode and caller, takes a smaller share), never fewer."""
    return max(bounded, int(fuzz_examples() * share))


def load_hypothesis_profile() -> None:
    """Register and load the suite's hypothesis profile: no per-example deadline (tests touch a
    real database and disk, whose latency is not the property under test), and fixtures that
    live across examples are allowed (each test resets what it reads)."""
    common = {
        "deadline": None,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        "print_blob": True,
    }
    settings.register_profile("classcam", **common)
    settings.register_profile("classcam-fuzz", max_examples=fuzz_examples() or 100, **common)
    settings.load_profile("classcam-fuzz" if fuzz_examples() else "classcam")
