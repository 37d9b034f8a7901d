"""The validation summary: long per-patient metrics aggregated to the design's format
(stage, metric, target, n, mean, median, p05, p95), and the per-stage tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ctp_steps.io import write_parquet

SUMMARY_COLUMNS = ["stage", "metric", "target", "n", "mean", "median", "p05", "p95"]


def summarize(metrics: pd.DataFrame) -> pd.DataFrame:
    """Long per-patient metrics → one row per (stage, metric, target), NaNs counted out of n."""
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
    return summary[SUMMARY_COLUMNS]


def summarize_metrics(inputs: list[Path], out_dir: Path) -> None:
    """Write per-stage per-patient tables and summary.parquet under results/validation/."""
    metrics = pd.concat([pd.read_parquet(p) for p in inputs], ignore_index=True)
    for stage, part in metrics.groupby("stage"):
        write_parquet(out_dir / f"{stage}.parquet", part.reset_index(drop=True))
    write_parquet(out_dir / "summary.parquet", summarize(metrics))
