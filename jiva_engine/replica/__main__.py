"""`python -m jiva_engine.replica ...`: the same as `jiva replica ...` (used by tests and services)."""

from __future__ import annotations

import argparse
import sys

from jiva_engine.replica import cli


def main(argv: list[str] | None = None) -> int:
    """Parse `jiva replica` options and run the replica."""
    parser = argparse.ArgumentParser(prog="jiva replica", description="run a replica")
    cli.add_arguments(parser)
    try:
        return cli.run(parser.parse_args(argv))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
