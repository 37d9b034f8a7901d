"""Landmark stage: heatmap net on the LV crop, AHA 17-segment map.

Modules, one concern each: config (settings), net (the study's landmark net,
width option, self-describing checkpoints), crop (LV crop grid and input
channels), heatmaps (Gaussian targets, loss, arg-max + local soft-argmax
decoding with confidence), data (phantom training cases), train, infer
(LandmarkDetector), stage (the per-patient work), figure (QC PNG). The bull's-eye
plot is shared (ctp_steps.bullseye); the metrics vs the phantom truth live in
ctp_steps.validation.landmarks.

Kept import-light: torch is imported by the submodules that need it.
"""
