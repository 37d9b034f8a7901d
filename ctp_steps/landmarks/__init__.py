"""Landmark stage: heatmap net on the LV crop, AHA 17-segment map, bull's-eye plots.

Modules, one concern each: config (settings), net (the study's landmark net,
width option, self-describing checkpoints), crop (LV crop grid and input
channels), heatmaps (Gaussian targets, loss, arg-max + local soft-argmax
decoding with confidence), data (phantom training cases), train, infer
(LandmarkDetector), stage (the per-patient work), figure (QC PNG), bullseye
(polar map of any per-segment value), validation (metrics vs the phantom truth).

Kept import-light: torch is imported by the submodules that need it.
"""
