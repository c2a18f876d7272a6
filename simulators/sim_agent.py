"""``python -m simulators.sim_agent run|reference``: ``classcam-agent`` on a replay's clock.

``run --config agent.toml --clock FILE --camera-plan plan.json [--skew-s N]`` is what
``classcam-agent run`` does (the agent service, the modem from the config, systemd notify,
until SIGTERM) with two things swapped: its clock is ``SharedClock(FILE, skew_s=N)`` (a device
whose clock is ``N`` s ahead; the modem driver runs on the same clock) and its camera is the
device's ``CameraPlan`` (``simulators.plan_camera``). ``reference`` with the same arguments is
``classcam-agent reference``: the plan's camera at the current simulated time, one still,
queued as the installation's reference.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edge_agent import cli
from edge_agent.config import ConfigError, load_config
from simulators.plan import CameraPlan
from simulators.plan_camera import PlanCamera
from simulators.sim_clock import SharedClock


def build_parser() -> argparse.ArgumentParser:
    """The ``sim_agent`` argument parser: ``run`` and ``reference`` take the same arguments."""
    parser = argparse.ArgumentParser(prog="python -m simulators.sim_agent", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("run", "run as the device's service on the shared clock"),
        ("reference", "queue the plan camera's still of the classroom as the reference"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", type=Path, required=True, help="the device's agent.toml")
        p.add_argument("--clock", type=Path, required=True, help="the replay's clock file")
        p.add_argument("--camera-plan", type=Path, required=True, help="CameraPlan JSON")
        p.add_argument("--skew-s", type=float, default=0.0, help="device clock this far ahead")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    plan = CameraPlan.from_json(args.camera_plan.read_text())
    device_clock = SharedClock(args.clock, skew_s=args.skew_s)
    true_clock = SharedClock(args.clock)  # the plan's periods are in true simulated time

    def factory() -> PlanCamera:
        # A fresh camera each time, as the agent opens one per recording and per reopen.
        return PlanCamera(config.device_id, plan, clock=device_clock, plan_clock=true_clock)

    try:
        if args.command == "reference":
            return cli.queue_reference(config, factory(), device_clock)
        return cli.run_service(config, clock=device_clock, camera_factory=factory)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
