"""``python -m bench.calibrate``: where the gate's thresholds may be chosen, on seeds the report never uses.

Runs the verdict grid of :mod:`bench.verdicts` (same families, strengths, rendering, audits) on the
calibration seeds 201-203 and stores it under ``calibration`` in ``CALIBRATION.json``. CALIBRATION.md
then shows, per check and cue family, the range over verified-fair and verified-biased models of
the bound each threshold is compared with, and how many fall on the wrong side of the default
fail threshold. A threshold chosen from these ranges is judged by ``python -m bench.verdicts`` on
seeds 301-303 (the tests use 0-2, the previous calibration 101-103).

    python -m bench.calibrate [--seeds 201 202 203] [--policy gate.yaml] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import calibration_doc as doc_mod
from bench.verdicts import CALIBRATION_SEEDS, REPORT_SEEDS, add_arguments, grid_from_args, run_grid

log = logging.getLogger("bench.calibrate")


def print_ranges(collection: dict) -> None:
    """The calibration table on stdout, for a quick look while choosing thresholds."""
    lines = doc_mod.calibration_section(collection, f"Calibration (seeds {', '.join(map(str, collection['seeds']))})")
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.calibrate", description=__doc__.splitlines()[0])
    add_arguments(ap)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    grid = grid_from_args(a, CALIBRATION_SEEDS)
    overlap = sorted(set(grid.seeds) & set(REPORT_SEEDS))
    if overlap:
        ap.error(f"--seeds {overlap} are report seeds (bench.verdicts): calibrating on them would grade the gate "
                 "on data it was tuned on")
    collection = run_grid(grid, a.work, a.policy, a.threads, a.jobs, kind="calibration")
    print_ranges(collection)
    json_path = a.json or (None if a.quick else Path(doc_mod.JSON_NAME))
    markdown = a.markdown or (None if a.quick else Path("CALIBRATION.md"))
    if json_path is not None:
        doc_mod.store("calibration", collection, json_path, markdown, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
