"""Realistic study sizes: per-stage wall time and peak RSS of one patient, a baseline commit vs the working tree.

    .venv/bin/python benchmarks/study_size.py --baseline 5f7e9db \\
        --sizes 48x256x256@2.5x0.7x0.7x15 96x512x512@1.25x0.4x0.4x20 320x512x512@0.5x0.4x0.4x20

For each size one phantom patient is rendered on that native grid
(`ctp_steps/phantom/native.py`: anatomy noise-free at >= 1 mm, interpolated,
noise added on the native grid) and written as a single-series DICOM export
(temporal-position style). Both code versions then run the real workflow on it
through a user manifest, in the same session, each from its own git worktree
(`PYTHONPATH=<worktree>`, Snakefile of that worktree). Snakemake's `benchmark:`
files give each job's wall time and max RSS; the declared `mem_mb` is what that
version's `ctp_steps.resources` declares for the study. A version that runs
past `--timeout-min` on a size is stopped; its finished stages are still
reported and the rest marked as not reached. The table (markdown) also
compares global MBF and IMV% between the versions where both finished.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ("convert", "segment_frames", "register", "segment_myocardium", "landmarks", "mbf", "imv")
CENTER, PATIENT = "CTR-B", "S0001"


def parse_size(text: str) -> tuple[tuple[int, int, int], tuple[float, float, float], int]:
    """'96x512x512@1.25x0.4x0.4x20' → shape (z, y, x), spacing (z, y, x) mm, frames."""
    shape, _, rest = text.partition("@")
    values = [float(v) for v in rest.split("x")]
    return tuple(int(v) for v in shape.split("x")), tuple(values[:3]), int(values[3])


def render_study(shape, spacing, n_frames: int, out: Path) -> Path:
    """The patient's DICOM folder and a one-row manifest (reused when already written)."""
    manifest = out / "manifest.csv"
    if manifest.exists():
        return manifest
    from ctp_steps.phantom import PatientSpec, PhantomParams, write_dicom, write_truth
    from ctp_steps.phantom.native import as_patient, native_study
    from ctp_steps.phantom.params import NativeGrid

    spec = PatientSpec(patient_id=PATIENT, center=CENTER, vendor_style="temporal_position", seed=4242)
    params = PhantomParams(n_frames=(n_frames, n_frames))
    patient = as_patient(native_study(spec, params, NativeGrid(shape_zyx=shape, spacing_zyx_mm=spacing)))
    write_dicom(patient, out / "dicom" / PATIENT, spec.vendor_style)
    write_truth(patient, out / "truth")
    pd.DataFrame([{"patient_id": PATIENT, "center": CENTER, "dicom_dir": str(out / "dicom" / PATIENT),
                   "followup_days": 1000.0, "event": 0, "age": 60, "sex": 1, "diabetes": 0, "hypertension": 0,
                   "smoking": 0}]).to_csv(manifest, index=False)
    return manifest


def worktree(rev: str, root: Path) -> Path:
    """A checkout of `rev` (the working tree itself for 'WORKTREE')."""
    if rev == "WORKTREE":
        return REPO
    path = root / f"tree-{rev}"
    if not path.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path


def run_version(
    tree: Path, manifest: Path, work: Path, timeout_min: float, last_stage: str = "imv"
) -> tuple[float, bool]:
    """Run one patient's chain up to `last_stage` with the code of `tree`; (wall seconds, finished)."""
    work.mkdir(parents=True, exist_ok=True)
    cfg = {"manifest": str(manifest), "results_dir": str(work / "results"), "fail_on_patient_errors": False}
    (work / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    target = work / "results" / "patients" / CENTER / PATIENT / f"{last_stage}.status.json"
    env = dict(os.environ, PYTHONPATH=str(tree))  # run from `work`: `python -m` puts the cwd first on sys.path
    t0 = time.perf_counter()
    try:
        with (work / "snakemake.log").open("w") as log:
            subprocess.run([sys.executable, "-m", "snakemake", "-s", str(tree / "Snakefile"), "--directory", str(work),
                            "--cores", "2", str(target), "--configfile", str(work / "cfg.yaml")],
                           env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_min * 60,
                           check=False)
        finished = target.exists()
    except subprocess.TimeoutExpired:
        finished = False
    return time.perf_counter() - t0, finished


def declared(tree: Path, stage: str, dicom_dir: str) -> int:
    code = (  # with the version's default working grid where it has one
        "import inspect; from ctp_steps.resources import declared_mem_mb as f; from ctp_steps.conversion import "
        "ConversionConfig as C; kw = {'working_spacing_mm': C().working_spacing_mm} if 'working_spacing_mm' in "
        f"inspect.signature(f).parameters else {{}}; print(f({stage!r}, {dicom_dir!r}, **kw))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(tree)), cwd=tree,
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def stage_rows(work: Path, tree: Path, dicom_dir: str) -> dict[str, dict]:
    rows = {}
    for stage in STAGES:
        bench = work / "results" / "benchmarks" / stage / CENTER / f"{PATIENT}.tsv"
        if not bench.exists():
            continue
        with bench.open() as f:
            rec = next(csv.DictReader(f, delimiter="\t"))
        rows[stage] = {"wall_s": float(rec["s"]), "peak_mb": float(rec["max_rss"]),
                       "declared_mb": declared(tree, stage, dicom_dir)}
    return rows


def patient_numbers(work: Path) -> dict:
    folder = work / "results" / "patients" / CENTER / PATIENT
    out = {}
    for stage, keys in (("mbf", ("mbf_global",)), ("imv", ("imv_pct",))):
        path = folder / f"{stage}.status.json"
        if path.exists():
            record = json.loads(path.read_text()).get("record", {})
            out.update({k: record.get(k) for k in keys})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision of today's code")
    parser.add_argument("--candidate", default="WORKTREE", help="git revision of the new code (default: this tree)")
    parser.add_argument("--sizes", nargs="+", default=["48x256x256@2.5x0.7x0.7x15", "96x512x512@1.25x0.4x0.4x20"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/ctp-study-size"))
    parser.add_argument("--timeout-min", type=float, default=30.0, help="per version and size")
    parser.add_argument("--skip-baseline-above", type=float, default=float("inf"),
                        help="voxel-frames (millions) above which the baseline runs only up to --baseline-until")
    parser.add_argument("--baseline-until", default="none", choices=("none", *STAGES),
                        help="last stage of the baseline on the large sizes ('none': not run); e.g. segment_frames "
                        "where today's register needs more memory than the machine has")
    args = parser.parse_args()

    lines = ["| study (z×y×x @ mm, frames) | stage | baseline s | new s | speed-up | baseline peak MB | "
             "new peak MB | new declared mem_mb | new peak / declared |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    summary = []
    for text in args.sizes:
        shape, spacing, n_frames = parse_size(text)
        size_dir = args.out / text.replace("@", "_at_")
        manifest = render_study(shape, spacing, n_frames, size_dir / "study")
        dicom_dir = str(size_dir / "study" / "dicom" / PATIENT)
        voxel_frames_m = n_frames * shape[0] * shape[1] * shape[2] / 1e6
        versions = {}
        for label, rev in (("baseline", args.baseline), ("new", args.candidate)):
            last = "imv"
            if label == "baseline" and voxel_frames_m > args.skip_baseline_above:
                if args.baseline_until == "none":
                    versions[label] = (None, False, {}, {})
                    continue
                last = args.baseline_until
            tree = worktree(rev, args.out)
            work = size_dir / label
            wall, finished = run_version(tree, manifest, work, args.timeout_min, last)
            versions[label] = (wall, finished, stage_rows(work, tree, dicom_dir), patient_numbers(work))
        base, new = versions["baseline"], versions["new"]
        for stage in STAGES:
            b, n = base[2].get(stage), new[2].get(stage)
            fmt = lambda r, k, f: (f.format(r[k]) if r else "—")  # noqa: E731
            speed = f"{b['wall_s'] / n['wall_s']:.1f}×" if b and n else "—"
            ratio = f"{n['peak_mb'] / n['declared_mb']:.2f}" if n else "—"
            lines.append(f"| {text} | {stage} | {fmt(b, 'wall_s', '{:.1f}')} | {fmt(n, 'wall_s', '{:.1f}')} | {speed} | "
                         f"{fmt(b, 'peak_mb', '{:.0f}')} | {fmt(n, 'peak_mb', '{:.0f}')} | "
                         f"{fmt(n, 'declared_mb', '{:d}')} | {ratio} |")
        summary.append({"study": text, "voxel_frames_M": voxel_frames_m,
                        **{f"{k}_wall_s": (v[0] if v[0] is not None else float("nan")) for k, v in versions.items()},
                        **{f"{k}_finished": v[1] for k, v in versions.items()},
                        **{f"{k}_{m}": x for k, v in versions.items() for m, x in v[3].items()}})
    print("\n".join(lines))
    print()
    print(pd.DataFrame(summary).to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()
