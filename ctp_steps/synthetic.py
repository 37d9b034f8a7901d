"""The synthetic cohort's manifest: covariates and outcomes drawn from the known hazard model.

It is written like a user's manifest (relative `dicom_dir`, no truth columns),
so the pipeline reads the synthetic cohort exactly as it reads real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ctp_steps.io import atomic_path, read_json
from ctp_steps.phantom.outcomes import OutcomeParams, draw_covariates, draw_outcomes

OUTCOME_SEED_KEY = 0x0C0E  # separates the outcome stream from every phantom patient seed


def synthetic_manifest(truth_files: list[Path], outcome: OutcomeParams, seed: int) -> pd.DataFrame:
    """One manifest row per phantom patient; truth files live at truth/{center}/{patient}/truth.json."""
    rows = []
    for path in truth_files:
        center, patient = path.parent.parent.name, path.parent.name
        rows.append(
            {
                "patient_id": patient,
                "center": center,
                "dicom_dir": f"dicom/{center}/{patient}",
                "imv_pct": float(read_json(path)["imv_pct"]),
            }
        )
    table = pd.DataFrame(rows).sort_values(["center", "patient_id"], ignore_index=True)
    rng = np.random.default_rng([seed, OUTCOME_SEED_KEY])
    covariates = draw_covariates(rng, len(table), outcome)
    outcomes = draw_outcomes(rng, covariates, table["imv_pct"].to_numpy(), outcome)
    return pd.concat([table.drop(columns="imv_pct"), outcomes, covariates], axis=1)


def write_synthetic_manifest(truth_files: list[Path], out: Path, outcome: dict, seed: int) -> None:
    table = synthetic_manifest(truth_files, OutcomeParams.model_validate(outcome), seed)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
