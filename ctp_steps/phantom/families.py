"""One entry point for rendering a phantom patient of either family, on its own or a native grid.

The synthesize command and the conversion validation (which re-renders a patient from its seed to check
the converted voxels exactly) must render the same patient the same way.
"""

from __future__ import annotations

from typing import Literal

from ctp_steps.phantom.params import NativeGrid, PatientSpec, PhantomParams

Family = Literal["default", "shifted"]


def render_patient(spec: PatientSpec, params: PhantomParams, family: Family = "default", native: NativeGrid | None = None):
    """The PhantomPatient of `spec`: the shifted family draws its own native grid; the default family renders
    on the phantom's grid, or on `native` when given (ctp_steps/phantom/native.py)."""
    if family == "shifted":
        from ctp_steps.phantom.shifted import generate_shifted_patient

        if native is not None:
            raise ValueError("the shifted family draws its own native grid: no native grid may be given")
        return generate_shifted_patient(spec, params)
    if native is not None:
        from ctp_steps.phantom.native import as_patient, native_study

        return as_patient(native_study(spec, params, native))
    from ctp_steps.phantom.patient import generate_patient

    return generate_patient(spec, params)


def rendering_of(truth: dict) -> tuple[Family, NativeGrid | None]:
    """The family and native grid a truth.json was rendered with (what `render_patient` needs again)."""
    family = truth.get("family", "default")
    rendering = truth.get("rendering") or {}
    if family != "shifted" and "native_shape_zyx" in rendering:
        return family, NativeGrid(shape_zyx=tuple(rendering["native_shape_zyx"]),
                                  spacing_zyx_mm=tuple(rendering["native_spacing_zyx_mm"]))
    return family, None
