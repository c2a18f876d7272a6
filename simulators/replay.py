"""``classcam-sim replay SCENARIO``: replay a scenario's day on real parts and check every
session's verdict against what the scenario expects.

Without ``--broker``/``--server`` the replay starts its own Mosquitto and server (SQLite and a
filesystem evidence store under the workdir). Otherwise:

- ``--broker mqtt://host:port``: a broker that already accepts the server's accounts; the
  replay provisions the devices, writes their passwords to ``WORKDIR/broker-accounts.json``
  and waits until the broker's administrator has added them;
- ``--server URL`` (needs ``--broker``, the server's own): a server started before the replay
  on its shared clock (``python -m simulators.sim_server run`` with ``CLASSCAM_SIM_CLOCK`` =
  ``WORKDIR/clock.json`` of a fresh workdir, so on this machine; it waits for the file), whose
  database ``classcam-server import`` reaches from this shell's ``CLASSCAM_*`` environment,
  with an admin token from ``--token`` or ``CLASSCAM_SIM_TOKEN``. docs/scenarios.md has the
  steps.

Exit status 0 only when every session matched; 2 for a scenario with mistakes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from simulators.plan import ReplayPlan
from simulators.replay_forgery import start_forger
from simulators.replay_run import ReplayRunner
from simulators.replay_stack import ReplayStack
from simulators.replay_timeline import SessionOutcome
from simulators.replay_view import LiveView, ReplayReport, outcome_table

# Real seconds a replay may take beyond its classes at speed (starting, settling, jumps).
TIMEOUT_SLACK_S = 300.0


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """How a replay ended: its report (outcomes, counters), where its server answered, and the
    server's last view of each session (``GET /sessions/{id}``, in English) to explain a mismatch
    once the server is gone."""

    report: ReplayReport
    api_url: str
    admin_token: str
    views: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def outcomes(self) -> list[SessionOutcome]:
        return self.report.outcomes

    @property
    def ok(self) -> bool:
        return not self.report.timed_out and all(o.match for o in self.outcomes)


def exit_status(result: ReplayResult) -> int:
    """The command's exit status: 0 only when every session matched in time."""
    return 0 if result.ok else 1


def default_timeout_s(plan: ReplayPlan, speed: float) -> float:
    """Real seconds allowed: every class at speed, three times over, plus slack."""
    in_class = sum((s.end - s.start).total_seconds() for s in plan.sessions)
    return TIMEOUT_SLACK_S + 3 * in_class / speed


def prepare_workdir(workdir: Path) -> None:
    """A fresh workdir: an earlier replay's (it has a clock.json) is removed, anything else
    that is not empty is refused rather than deleted."""
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / "clock.json").exists():
            raise SystemExit(f"{workdir} is not empty and not a replay's workdir: choose another")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)


def evidence_lines(result: ReplayResult) -> list[str]:
    """Where people see each session's evidence: its dashboard page (sign in with the admin
    token), and the API for machines."""
    site = result.api_url.removesuffix("/api/v1")
    lines = [f"dashboard {site}/ui/  (sign in with the admin token {result.admin_token})"]
    for o in result.outcomes:
        lines.append(f"  {site}/ui/sessions/{o.session.session_id}")
    lines.append(f"API {result.api_url}  (header  Authorization: Bearer {result.admin_token})")
    return lines


def run_replay(
    plan: ReplayPlan,
    *,
    workdir: Path,
    speed: float | None = None,
    broker_url: str | None = None,
    server_url: str | None = None,
    token: str | None = None,
    report: Path | None = None,
    console: Console,
    keep_serving: bool = False,
    timeout_s: float | None = None,
) -> ReplayResult:
    """Replay ``plan`` on real parts, show it live, print the table (and write the report);
    with ``keep_serving``, keep the broker and server up until Ctrl-C. Everything started is
    stopped on the way out, Ctrl-C included."""
    speed = speed or plan.speed
    prepare_workdir(workdir)
    began = time.monotonic()
    stack = ReplayStack(
        plan,
        workdir,
        speed=speed,
        broker_url=broker_url,
        server_url=server_url,
        token=token,
        start_forger=start_forger,
    )
    with stack:
        with console.status(f"starting {len(plan.devices)} device(s), broker and server…"):
            stack.start()
        console.print(
            f"[dim]started in {time.monotonic() - began:.0f} s; workdir {workdir}; "
            f"API {stack.api_url}"
        )
        runner = ReplayRunner(plan, stack, timeout_s=timeout_s or default_timeout_s(plan, speed))
        view = LiveView(console)
        with view.running():
            runner.on_status = view.update
            finished, _ = runner.run()
        summary = runner.report(time.monotonic() - began, timed_out=not finished)
        result = ReplayResult(summary, stack.api_url, stack.admin_token, dict(runner.views))
        console.print(outcome_table(plan.name, result.outcomes))
        if not finished:
            console.print("[bold red]timed out before every verdict was final")
        console.print(
            f"{summary.wall_s:.0f} s real for {(summary.clock_end - summary.clock_start)} "
            f"simulated, {len(summary.jumps)} jump(s)"
        )
        if report is not None:
            summary.write(report)
            console.print(f"report: {report}")
        if keep_serving:
            serve_until_interrupted(stack, result, console)
    return result


def serve_until_interrupted(stack: ReplayStack, result: ReplayResult, console: Console) -> None:
    """The devices stop; the broker and the server keep answering, at real speed, until
    Ctrl-C."""
    stack.stop_devices()
    stack.clock.set_speed(1.0)
    for line in evidence_lines(result):
        console.print(line, soft_wrap=True)
    console.print("serving until Ctrl-C")
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)


@contextlib.contextmanager
def _scenario_errors(console: Console) -> Iterator[None]:
    from simulators.scenario import ScenarioError

    try:
        yield
    except ScenarioError as exc:
        for line in str(exc).splitlines():
            console.print(line, markup=False, highlight=False)
        raise SystemExit(2) from None


def load_plan(path: Path, console: Console) -> ReplayPlan:
    """The plan of a scenario file; a scenario with mistakes prints them and exits 2."""
    from simulators.behaviours import plan_replay
    from simulators.scenario_load import load_scenario

    with _scenario_errors(console):
        return plan_replay(load_scenario(path))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="classcam-sim replay", description=__doc__)
    parser.add_argument("scenario", type=Path)
    parser.add_argument("--speed", type=float, help="simulated seconds per real second")
    parser.add_argument("--broker", help="mqtt://host:port of a running broker")
    parser.add_argument("--server", help="URL of a running server's API (needs --broker)")
    parser.add_argument("--token", default=os.environ.get("CLASSCAM_SIM_TOKEN"))
    parser.add_argument("--report", type=Path, help="write the JSON report here")
    parser.add_argument("--workdir", type=Path, help="default: var/replay/SCENARIO")
    parser.add_argument("--timeout", type=float, help="real seconds before giving up")
    parser.add_argument("--keep-serving", action="store_true", help="serve until Ctrl-C")
    return parser


def interrupt_on_sigterm() -> None:
    """SIGTERM stops a replay as Ctrl-C does: through its clean-up, so no agent, server or
    broker outlives it."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def quiet_logging() -> None:
    """Warnings only: the live view tells what happens (the in-process provisioning would
    otherwise set every library's INFO lines loose on the terminal)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_logging()
    interrupt_on_sigterm()
    console = Console()
    if args.speed is not None and args.speed <= 0:
        console.print("--speed must be positive")
        return 2
    plan = load_plan(args.scenario, console)
    try:
        result = run_replay(
            plan,
            workdir=args.workdir or Path("var/replay") / args.scenario.stem,
            speed=args.speed,
            broker_url=args.broker,
            server_url=args.server,
            token=args.token,
            report=args.report,
            console=console,
            keep_serving=args.keep_serving,
            timeout_s=args.timeout,
        )
    except KeyboardInterrupt:
        console.print("interrupted; everything the replay started is stopped")
        return 130
    return exit_status(result)


if __name__ == "__main__":
    raise SystemExit(main())
