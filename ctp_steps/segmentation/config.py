"""Settings of the segmentation stages (validated as part of the pipeline config)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


# The device comes from the pipeline-wide `device` key.
class SegmentationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    frames_model: str = Field("vbnet_frames", description="Entry of models/manifest.json for aorta + LV on frames.")
    myocardium_model: str = Field("vbnet_myocardium", description="Entry of models/manifest.json for the myocardium.")
