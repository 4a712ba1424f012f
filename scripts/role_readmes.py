#!/usr/bin/env python3
"""Write each role's README.md from its meta/argument_specs.yml (the one source of the options).

python scripts/role_readmes.py          # rewrite collections/ansible_collections/jiva/storage/roles/*/README.md
python scripts/role_readmes.py --check  # exit 1 naming the READMEs that are out of date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ROLES = ROOT / "collections/ansible_collections/jiva/storage" / "roles"
TAGS = {"install": "jiva_install", "witness": "jiva_witness", "replica": "jiva_replica",
        "controller": "jiva_controller"}  # fmt: skip


def _text(v: object) -> str:
    """Plain markdown from Ansible doc markup (C(x), V(x), I(x), O(x) -> `x`)."""
    if isinstance(v, list):
        v = " ".join(str(x) for x in v)
    return re.sub(r"\b[CVIO]\(([^)]*)\)", r"`\1`", " ".join(str(v).split()))


def _default(v: object) -> str:
    if isinstance(v, bool):
        return "`true`" if v else "`false`"
    if isinstance(v, (list, dict)):
        return f"`{json.dumps(v)}`"
    return f"`{_cell(v)}`" if v != "" else "-"


def _cell(v: object) -> str:
    return _text(v).replace("|", "\\|")


def render(role: str, spec: dict) -> str:
    """The README of `role` from its argument spec (entry point `main`)."""
    main = spec["argument_specs"]["main"]
    lines = [
        f"# Role `{role}`",
        "",
        f"{_text(main['short_description'])}.",
        "",
    ]
    for para in main.get("description") or []:
        lines += [_text(para), ""]
    tag = TAGS.get(role)
    lines += [
        "## Use",
        "",
        "`playbooks/site.yml` runs it on every host of the group `jiva_nodes`, after the inventory "
        "was validated and the volumes placed (`jiva.storage.placement`); "
        + (
            f"`--tags {tag}` runs only this role (with the validation and placement). "
            if tag
            else ""
        )
        + "The inventory format is in [docs/ANSIBLE.md](../../docs/ANSIBLE.md).",
        "",
        "## Variables",
        "",
        "Checked against `meta/argument_specs.yml` when the role starts (this table is generated "
        "from it by `scripts/role_readmes.py`).",
        "",
        "| variable | type | default | description |",
        "|---|---|---|---|",
    ]
    for name, opt in main.get("options", {}).items():
        kind = opt.get("type", "str")
        if opt.get("choices"):
            kind += " (" + ", ".join(str(c) for c in opt["choices"]) + ")"
        default = "required" if opt.get("required") else _default(opt.get("default", ""))
        lines.append(f"| `{name}` | {kind} | {default} | {_cell(opt.get('description', ''))} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report READMEs out of date")
    args = ap.parse_args()
    stale = []
    for spec_file in sorted(ROLES.glob("*/meta/argument_specs.yml")):
        role = spec_file.parent.parent.name
        text = render(role, yaml.safe_load(spec_file.read_text()))
        readme = spec_file.parent.parent / "README.md"
        if not readme.exists() or readme.read_text() != text:
            stale.append(str(readme.relative_to(ROOT)))
            if not args.check:
                readme.write_text(text)
    if args.check and stale:
        print("out of date (run python scripts/role_readmes.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
