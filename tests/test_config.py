"""Config model: the embedded default validates, bad values are all listed, schema is current."""

import json
from pathlib import Path

import pytest
import yaml

from ctp_steps.config import ConfigError, config_hash, json_schema, load_config

REPO = Path(__file__).resolve().parents[1]


def _default() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_embedded_default_is_valid():
    cfg = load_config(_default())
    assert cfg.uses_synthetic_cohort
    assert cfg.synthetic.n_patients == 40
    assert [c.vendor_style for c in cfg.synthetic.centers] == [
        "series_per_frame", "temporal_position", "trigger_time", "temporal_position"
    ]


def test_every_problem_listed_with_its_key():
    raw = _default()
    raw["device"] = "tpu"
    raw["synthetic"]["n_patients"] = 0
    raw["synthetic"]["centers"][0]["name"] = "../x"
    raw["unknown_key"] = 1
    with pytest.raises(ConfigError) as err:
        load_config(raw)
    msg = str(err.value)
    assert "config device:" in msg
    assert "config synthetic.n_patients: Input should be greater than or equal to 1" in msg
    assert "config synthetic.centers.0.name: String should match pattern" in msg
    assert "config unknown_key: Extra inputs are not permitted" in msg


def test_config_hash_changes_with_any_value():
    a = load_config(_default())
    raw = _default()
    raw["conversion"] = {"min_frames": 9}
    assert config_hash(a) == config_hash(load_config(_default()))
    assert config_hash(a) != config_hash(load_config(raw))


def test_exported_schema_is_current():
    """config/config.schema.json is generated from the model (`make schema`)."""
    shipped = json.loads((REPO / "config" / "config.schema.json").read_text())
    assert shipped == json_schema()
