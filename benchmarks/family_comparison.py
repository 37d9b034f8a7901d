"""In-distribution vs shifted phantom family, side by side, from two validation summaries.

    .venv/bin/python benchmarks/family_comparison.py results/validation/summary.parquet \
        results/shifted/validation/summary.parquet [--cohort results/cohort/patients.parquet \
        results/shifted/cohort/patients.parquet]

Prints a markdown table (metric, target, then mean / p05 / p95 and n of each family) for every
(stage, metric, target) present in either summary; with `--cohort`, a first row gives each family's
usable fraction (patients whose chain finished, status ok). The family of each summary is read from
its `family` column (a summary written before the column existed counts as `default`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

KEYS = ["stage", "metric", "target"]


def family_of(summary: pd.DataFrame, fallback: str) -> str:
    """The single family a summary describes."""
    if "family" not in summary:
        return fallback
    families = summary["family"].unique().tolist()
    if len(families) != 1:
        raise ValueError(f"a summary of one run has one family, found {families}")
    return str(families[0])


def usable_row(patients: pd.DataFrame) -> dict:
    """Usable fraction of a cohort: status ok over all patients (n = cohort size)."""
    ok = float((patients["status"] == "ok").mean()) if len(patients) else float("nan")
    return {"stage": "cohort", "metric": "usable_fraction", "target": "all", "n": len(patients),
            "mean": ok, "p05": float("nan"), "p95": float("nan")}


def side_by_side(left: pd.DataFrame, right: pd.DataFrame, names: tuple[str, str]) -> pd.DataFrame:
    """One row per (stage, metric, target): each family's mean, p05, p95 and n (outer join: a metric one
    family lacks, e.g. because no patient reached that stage, shows as empty)."""
    cols = ["mean", "p05", "p95", "n"]
    a = left[KEYS + cols].rename(columns={c: f"{names[0]} {c}" for c in cols})
    b = right[KEYS + cols].rename(columns={c: f"{names[1]} {c}" for c in cols})
    return a.merge(b, on=KEYS, how="outer").sort_values(KEYS, ignore_index=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("default_summary", type=Path)
    ap.add_argument("shifted_summary", type=Path)
    ap.add_argument("--cohort", nargs=2, type=Path, metavar=("DEFAULT_PATIENTS", "SHIFTED_PATIENTS"))
    args = ap.parse_args(argv)
    left, right = pd.read_parquet(args.default_summary), pd.read_parquet(args.shifted_summary)
    names = (family_of(left, "default"), family_of(right, "shifted"))
    if names[0] == names[1]:
        names = (f"{names[0]} (1)", f"{names[1]} (2)")
    if args.cohort:
        left = pd.concat([pd.DataFrame([usable_row(pd.read_parquet(args.cohort[0]))]), left], ignore_index=True)
        right = pd.concat([pd.DataFrame([usable_row(pd.read_parquet(args.cohort[1]))]), right], ignore_index=True)
    table = side_by_side(left, right, names)
    table.insert(0, "metric / target", table["stage"] + ": " + table["metric"] + " / " + table["target"])
    print(table.drop(columns=KEYS).to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
