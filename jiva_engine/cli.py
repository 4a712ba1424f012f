"""The `jiva` command: replica, witness, controller, target, status, grow, qos, scrub, backup,
clone, supervise and ha."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module exposing add_arguments(parser) and run(args) -> int
SUBCOMMANDS = {
    "replica": ("jiva_engine.replica.cli", "run a replica: store a volume's blocks on this node"),
    "witness": ("jiva_engine.witness.cli", "run a witness: a volume's metadata-only voter"),
    "controller": ("jiva_engine.controller.cli", "run a volume's controller and iSCSI target"),
    "target": ("jiva_engine.iscsi.cli", "serve one local file as an iSCSI target"),
    "status": ("jiva_engine.api.cli", "show a volume's state from its management API"),
    "grow": ("jiva_engine.api.grow", "grow a volume online through its management API"),
    "qos": ("jiva_engine.api.qos", "show or change a volume's QoS limits (IOPS, MiB/s) online"),
    "scrub": ("jiva_engine.api.scrub", "check every block copy of a volume, repair what is bad"),
    "snapshot": ("jiva_engine.api.snapshot", "create, list, delete or revert a volume's snapshots"),
    "backup": ("jiva_engine.backup.cli", "back up snapshots to a folder, list, restore, prune"),
    "clone": ("jiva_engine.backup.clone", "copy a snapshot of one volume into another volume"),
    "supervise": ("jiva_engine.supervise", "keep one jiva process running (hosts without systemd)"),
    "ha": ("jiva_engine.ha", "run the failover play periodically (control node)"),
}


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser; each subcommand's module adds its own options."""
    parser = argparse.ArgumentParser(prog="jiva", description="replicated iSCSI block storage")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `jiva` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
