"""The validation summary: long per-patient metrics aggregated to the design's format
(stage, metric, target, n, mean, median, p05, p95, family), and the per-stage tables.

`family` names the phantom family the cohort was drawn from (config
`synthetic.family`: `default`, the nets' training distribution, or `shifted`,
ctp_steps/phantom/shifted.py), so that summaries of both families can be put side
by side (benchmarks/family_comparison.py) without mistaking one for the other.
The workflow's summary reads it from the run's effective configuration,
`<results>/cohort/config.json` (an input of the `validate` rule).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ctp_steps.io import read_json, write_parquet

SUMMARY_COLUMNS = ["stage", "metric", "target", "n", "mean", "median", "p05", "p95", "family"]
DEFAULT_FAMILY = "default"


def summarize(metrics: pd.DataFrame, family: str = DEFAULT_FAMILY) -> pd.DataFrame:
    """Long per-patient metrics → one row per (stage, metric, target), NaNs counted out of n, tagged with
    the phantom family the patients came from."""
    def stats(values: pd.Series) -> pd.Series:
        v = values.dropna().to_numpy(dtype=float)
        if v.size == 0:
            return pd.Series({"n": 0, "mean": np.nan, "median": np.nan, "p05": np.nan, "p95": np.nan})
        return pd.Series(
            {
                "n": v.size,
                "mean": v.mean(),
                "median": np.median(v),
                "p05": np.percentile(v, 5),
                "p95": np.percentile(v, 95),
            }
        )

    grouped = metrics.groupby(["stage", "metric", "target"], sort=True)["value"].apply(stats).unstack()
    summary = grouped.reset_index()
    summary["n"] = summary["n"].astype("int64")
    summary["family"] = family
    return summary[SUMMARY_COLUMNS]


def run_family(config_json: Path) -> str:
    """The phantom family of a run from its effective configuration (`cohort/config.json`); a run without
    one (or a user manifest, which has no family) counts as the default."""
    config_json = Path(config_json)
    if not config_json.is_file():
        return DEFAULT_FAMILY
    return str(read_json(config_json).get("synthetic", {}).get("family", DEFAULT_FAMILY))


def summarize_metrics(inputs: list[Path], out_dir: Path, family: str | None = None) -> None:
    """Write per-stage per-patient tables and summary.parquet under results/validation/.

    `family` None: read from `<out_dir>/../cohort/config.json`, which the workflow writes beside the cohort
    tables (results/validation and results/cohort share the results folder)."""
    out_dir = Path(out_dir)
    if family is None:
        family = run_family(out_dir.parent / "cohort" / "config.json")
    metrics = pd.concat([pd.read_parquet(p) for p in inputs], ignore_index=True)
    for stage, part in metrics.groupby("stage"):
        write_parquet(out_dir / f"{stage}.parquet", part.reset_index(drop=True))
    write_parquet(out_dir / "summary.parquet", summarize(metrics, family))
