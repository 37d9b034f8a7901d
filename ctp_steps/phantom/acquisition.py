"""Acquisition settings of one dynamic scan: irregular frame times, tube voltage, noise level."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctp_steps.phantom.params import PhantomParams, uniform


@dataclass(frozen=True)
class Acquisition:
    frame_times_s: np.ndarray  # first frame at 0, strictly increasing, whole milliseconds
    kvp: float
    noise_sd_hu: float


def draw_frame_times(rng: np.random.Generator, params: PhantomParams) -> np.ndarray:
    """n frames over the drawn duration with jittered steps (shuttle-mode timing is never regular).

    Times are rounded to whole milliseconds so that every DICOM timing
    convention (TM with microseconds, TriggerTime in ms) stores them exactly.
    """
    n = int(rng.integers(params.n_frames[0], params.n_frames[1] + 1))
    duration = uniform(rng, params.duration_s)
    steps = 1.0 + params.frame_step_jitter * rng.uniform(-1.0, 1.0, size=n - 1)
    times = np.concatenate([[0.0], np.cumsum(steps)]) * (duration / steps.sum())
    return np.round(times, 3)


def draw_acquisition(
    timing_rng: np.random.Generator, rng: np.random.Generator, params: PhantomParams
) -> Acquisition:
    return Acquisition(
        frame_times_s=draw_frame_times(timing_rng, params),
        kvp=float(rng.choice(np.asarray(params.kvp_choices))),
        noise_sd_hu=uniform(rng, params.noise_sd_hu),
    )
