"""``classcam-sim``: simulated parts and replays for ops staff."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: classcam-sim demo [--seconds N] [--fast] [--workdir DIR]\n\n"
            "  demo   the evidence path end to end on this machine (what `make demo` runs)\n"
            "  replay SCENARIO [--speed X] [--broker URL] [--server URL] [--report FILE]\n"
            "         replay a scenario's day on real parts; exit 0 only if every verdict matched\n"
            "  check SCENARIO...\n"
            "         check scenario files (every problem with its line and field), replay nothing"
        )
        return 0 if argv else 2
    if argv[0] == "demo":
        from simulators.demo import main as demo_main

        return demo_main(argv[1:])
    if argv[0] == "replay":
        from simulators.replay import main as replay_main

        return replay_main(argv[1:])
    if argv[0] == "check":
        from simulators.check_scenarios import main as check_main

        return check_main(argv[1:])
    print(f"classcam-sim: unknown command {argv[0]!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
