"""Do two runs give the same numbers? Compares the cohort tables, the risk tables and the validation summary.

    .venv/bin/python benchmarks/compare_runs.py RESULTS_BEFORE RESULTS_AFTER

For refactors, which must change no number: every column the two tables share is
compared exactly (provenance columns `config_hash` and `software_version` aside);
columns only one side has are listed. Exits 1 on any difference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

TABLES = ("cohort/patients.parquet", "cohort/segments.parquet", "cohort/risk/cox.parquet",
          "cohort/risk/concordance.parquet", "cohort/risk/ph_test.parquet", "validation/summary.parquet")
PROVENANCE = {"config_hash", "software_version"}


def compare(before: Path, after: Path) -> bool:
    same = True
    for name in TABLES:
        if not (before / name).exists() or not (after / name).exists():
            print(f"{name}: missing on one side")
            same = False
            continue
        x, y = pd.read_parquet(before / name), pd.read_parquet(after / name)
        common = [c for c in x.columns if c in y.columns and c not in PROVENANCE]
        try:
            pd.testing.assert_frame_equal(x[common], y[common], check_exact=True)
            verdict = "identical"
        except AssertionError as exc:
            verdict, same = f"DIFFERENT: {' '.join(str(exc).split())[:300]}", False
        only = sorted(set(x.columns) ^ set(y.columns))
        print(f"{name}: {len(x)} rows, {len(common)} shared columns {verdict}" + (f"; only on one side: {only}" if only else ""))
    return same


if __name__ == "__main__":
    sys.exit(0 if compare(Path(sys.argv[1]), Path(sys.argv[2])) else 1)
