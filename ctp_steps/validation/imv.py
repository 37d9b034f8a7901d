"""IMV against the phantom's truth: per-patient metrics (validation only: reads the truth folder).

Definitions (rows of ctp_steps.validation.rows, stage `imv`):
- imv_pct_abs_error = |IMV% - true IMV%|, imv_pct_error its signed value
  (targets lv, lv_raw, and per territory lad, rca, lcx);
- ischemia_dice = Dice of the ischemic masks, only where true IMV% >= 5 (NaN elsewhere);
- imv_pct_ci95_coverage, target lv: 1/0 for the stage's 95 % interval (imv_pct_ci_low/high of its record)
  holding the true IMV%, imv_pct_z = (IMV% - true) / imv_pct_se; NaN where the record has no interval
  (older runs, or the interval switched off).
The truth maps are taken where the registered series shows them (ctp_steps.validation.truth.truth_maps).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ctp_steps.aha import TERRITORY_SEGMENTS
from ctp_steps.io import read_json, read_status, read_volume
from ctp_steps.layout import file_name, status_name
from ctp_steps.validation.rows import patient_rows
from ctp_steps.validation.truth import MYOCARDIUM, truth_maps

DICE_MIN_TRUE_IMV_PCT = 5.0


def _float(x) -> float:
    return math.nan if x is None else float(x)


def imv_interval_rows(record: dict, true_pct: float) -> list[tuple[str, str, float]]:
    """Coverage (1/0) and z of the stage's IMV% interval against the true IMV% (NaN where not reported)."""
    low, high = _float(record.get("imv_pct_ci_low")), _float(record.get("imv_pct_ci_high"))
    pct, se = _float(record.get("imv_pct")), _float(record.get("imv_pct_se"))
    covered = float(low <= true_pct <= high) if math.isfinite(low) and math.isfinite(high) else math.nan
    z = (pct - true_pct) / se if math.isfinite(pct) and math.isfinite(se) and se > 0 else math.nan
    return [("imv_pct_ci95_coverage", "lv", covered), ("imv_pct_z", "lv", z)]


def imv_patient_metrics(truth_dir: Path, patient_dir: Path, imv_config_json: str) -> pd.DataFrame:
    """IMV% error and ischemia Dice of the IMV stage (target lv, lad, rca, lcx) and, as the
    regularisation's check, of the same IMV rule applied to the voxel-wise map (target lv_raw)."""
    from ctp_steps.imv import IMVConfig, ischemic_region

    if read_status(patient_dir / status_name("imv")).status != "ok":
        return patient_rows(truth_dir, "imv", [("imv_ok", "all", 0.0)])
    cfg = IMVConfig.model_validate_json(imv_config_json)
    truth = read_json(truth_dir / "truth.json")
    own_mask, own_geometry = read_volume(patient_dir / file_name("myocardium"))  # the grid the outputs are on
    true_mbf, labels, true_aha, geometry = truth_maps(truth_dir, patient_dir, own_geometry, own_mask.shape)
    true_myo = labels == MYOCARDIUM
    true_isch = true_myo & (true_mbf < truth["ischemia_threshold_mbf"])
    myo = read_volume(patient_dir / file_name("myocardium"))[0] > 0
    aha = read_volume(patient_dir / file_name("aha17"))[0]
    voxel_ml = geometry.voxel_ml
    raw = ischemic_region(read_volume(patient_dir / file_name("mbf_raw"))[0], myo, aha, voxel_ml, cfg).ischemia
    estimates = {"lv": read_volume(patient_dir / file_name("ischemia"))[0] > 0, "lv_raw": raw}
    true_pct = 100.0 * true_isch.sum() / true_myo.sum()
    rows = [("imv_ok", "all", 1.0)]
    for target, isch in estimates.items():
        pct = 100.0 * isch.sum() / myo.sum()
        dice = math.nan
        if true_pct >= DICE_MIN_TRUE_IMV_PCT:
            dice = 2.0 * (isch & true_isch).sum() / (isch.sum() + true_isch.sum())
        rows += [("imv_pct_abs_error", target, abs(pct - true_pct)), ("imv_pct_error", target, pct - true_pct),
                 ("ischemia_dice", target, dice)]
    for terr, segs in TERRITORY_SEGMENTS.items():
        pct = 100.0 * (estimates["lv"] & np.isin(aha, segs)).sum() / myo.sum()
        true_terr = 100.0 * (true_isch & np.isin(true_aha, segs)).sum() / true_myo.sum()
        rows.append(("imv_pct_abs_error", terr.lower(), abs(pct - true_terr)))
    rows += imv_interval_rows(read_status(patient_dir / status_name("imv")).record, true_pct)
    return patient_rows(truth_dir, "imv", rows)
