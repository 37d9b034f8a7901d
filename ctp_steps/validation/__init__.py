"""Validation against the phantom's hidden truth: per-patient metrics of every stage and the summary.

Only the validation rules run this package; it reads the truth folder, which
pipeline stages never do. Validation may import the stages (to re-run a method,
to reuse a stage's warp); no stage imports validation (tests/test_imports.py).

Modules:
- `rows`: the long metric-row format (patient_id, center, stage, metric, target,
  value), built once (`metric_frame`, `patient_rows`) and written by `write_metrics`;
- `truth`: the phantom's motion in closed form and the truth maps and landmarks
  taken where the registered series shows them (`truth_map_in_reference_frame`
  and friends);
- one module per stage: `conversion`, `segmentation`, `registration`,
  `landmarks`, `mbf` (with the cohort's segment agreement), `imv`;
- `summary`: per-patient rows → one row per (stage, metric, target).
"""
