"""Settings of the landmark stage (validated as part of the pipeline config)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


# The device comes from the pipeline-wide `device` key.
class LandmarkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field("landmark_net", description="Entry of models/manifest.json for the landmark heatmap net.")
