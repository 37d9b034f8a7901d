"""Synthetic CT myocardial-perfusion phantom: DICOM as scanners write it, plus hidden ground truth.

    specs = make_specs(n, [("CTR-A", "series_per_frame")], seed)
    patient = generate_patient(specs[0], PhantomParams())
    write_dicom(patient, dicom_dir, specs[0].vendor_style); write_truth(patient, truth_dir)

Modules, one concern each: params (settings, specs, seeds), grid (fine/padded
grids, block reductions), anatomy, perfusion (true MBF map), kinetics (blood
and tissue curves), acquisition (frame times, kVp, noise level), motion (and its inverse, undo_motion),
render (image formation), truth (truth maps and files), patient (assembly),
dicom_writer (vendor conventions). outcomes (covariates, MACE) is separate.

Importing the package stays cheap (config validation and DAG planning use
PhantomParams and make_specs): the rendering names load torch, scipy and
pydicom on first use.
"""

from importlib import import_module

from ctp_steps.phantom.params import VENDOR_STYLES, PatientSpec, PhantomParams, make_specs

_LAZY = {
    "PhantomPatient": "patient",
    "generate_patient": "patient",
    "write_dicom": "dicom_writer",
    "write_truth": "truth",
    "true_imv_pct": "truth",
    "displacement_field_mm": "motion",
    "undo_motion": "motion",
}

__all__ = ["VENDOR_STYLES", "PatientSpec", "PhantomParams", "make_specs", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"ctp_steps.phantom.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ctp_steps.phantom' has no attribute {name!r}")
