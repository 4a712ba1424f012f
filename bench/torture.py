"""Crash torture, full run: >= 200 faults against a 3-replica volume; prints the summary table.

Usage: .venv/bin/python bench/torture.py [--faults 200] [--seed N] [--hosts] [--kinds K,..]
(also: make torture)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: tests.torture

from tests.torture.run import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
