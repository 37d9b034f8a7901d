"""Table-level cohorts drawn from the phantom's outcome model, for checking the risk stage without images."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from ctp_steps.phantom.outcomes import OutcomeParams


def simulate_table_cohort(n: int, outcome: OutcomeParams, seed: int) -> pd.DataFrame:
    """Table-level patients from the phantom's outcome model (no images), for checking the risk stage.

    IMV% follows an ischemia prior: about 45 % of patients have none (a point mass at 0);
    the rest draw 40·Beta(1.3, 4) %, right-skewed up to 40 %. Ischemia is mildly more
    likely with diabetes, male sex and age, so the adjusted and unadjusted HRs differ.
    """
    from ctp_steps.phantom.outcomes import draw_covariates, draw_outcomes

    rng = np.random.default_rng(seed)
    cov = draw_covariates(rng, n, outcome)
    logit = -0.1 + 0.4 * cov["diabetes"] + 0.3 * cov["sex"] + 0.02 * (cov["age"] - outcome.age_mean)
    ischemic = rng.random(n) < 1.0 / (1.0 + np.exp(-logit.to_numpy()))
    imv = np.where(ischemic, np.maximum(40.0 * rng.beta(1.3, 4.0, n), 0.1), 0.0).round(1)
    outcomes = draw_outcomes(rng, cov, imv, outcome)
    return pd.DataFrame(
        {
            "patient_id": [f"SIM{i:05d}" for i in range(n)],
            "center": rng.choice(["SIM-A", "SIM-B", "SIM-C", "SIM-D"], n),
            "status": "ok",
            "reason": None,
            **cov.astype(float),
            "imv_pct": imv,
            **outcomes,
        }
    )
