"""Settings of the registration stage (validated as part of the pipeline config)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


# The device comes from the pipeline-wide `device` key.
class RegistrationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field("regnet", description="Entry of models/manifest.json for the learned registration net.")
