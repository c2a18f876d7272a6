"""``python -m simulators.sim_server run``: ``classcam-server run`` on a replay's shared clock.

The same settings (``CLASSCAM_*`` environment, ``--data-dir``, ``--database-url``), the same
consumer, scheduler and API as production; only the clock differs: ``SharedClock`` on the file
named by ``CLASSCAM_SIM_CLOCK`` (``simulators.sim_clock``), which the replay's conductor steers.
Every other ``classcam-server`` command is passed through unchanged, on the system clock.

A server for ``classcam-sim replay --server`` is started before the replay that creates its clock
(``WORKDIR/clock.json`` of a fresh workdir): ``run`` waits until the file appears, then serves.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from ingest_server import cli
from simulators.sim_clock import SharedClock

CLOCK_ENV = "CLASSCAM_SIM_CLOCK"
CLOCK_POLL_S = 0.1


def wait_for_clock(path: Path) -> None:
    """Until the replay's conductor has written its clock file (a server started before the
    replay it serves); SIGTERM ends the wait as it ends the server."""
    if path.exists():
        return
    logging.getLogger("classcam.server").info("waiting for the replay's clock %s", path)
    while not path.exists():
        time.sleep(CLOCK_POLL_S)


def main(argv: list[str] | None = None) -> int:
    """Parse like ``classcam-server``; ``run`` serves on the shared clock."""
    args = cli.build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = cli._settings(args)
    if args.command != "run":
        return cli.COMMANDS[args.command](settings, args)
    clock_file = os.environ.get(CLOCK_ENV)
    if not clock_file:
        print(f"{CLOCK_ENV} must name the replay's clock file", file=sys.stderr)
        return 2
    wait_for_clock(Path(clock_file))
    clock = SharedClock(Path(clock_file))
    logging.getLogger("classcam.server").info(
        "simulated clock %s: %s at %.0fx", clock_file, clock.now().isoformat(), clock.speed
    )
    return cli.serve_until_signalled(settings, clock)


if __name__ == "__main__":
    sys.exit(main())
