"""Peak memory and wall time of every per-patient stage against what the rule declares, by study size.

    .venv/bin/python benchmarks/stage_resources.py                       # default grid and 4x the voxels
    .venv/bin/python benchmarks/stage_resources.py --sizes 40x80x80@3.0x2.5x2.5 64x256x256@2.0x0.8x0.8

Each size runs the real workflow on one synthetic patient rendered on that grid
(Snakemake's own `benchmark:` files give each job's wall time and max RSS) and
prints a markdown table: measured peak beside the declared `mem_mb` of
`ctp_steps/resources.py`, and their ratio. The rules read the study size from
the DICOM headers, as here. Run it on an otherwise idle machine for the times.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ("convert", "segment_frames", "register", "segment_myocardium", "landmarks", "mbf", "imv")


def parse_size(text: str) -> tuple[list[int], list[float]]:
    shape, _, spacing = text.partition("@")
    return [int(v) for v in shape.split("x")], [float(v) for v in spacing.split("x")]


def run_size(shape: list[int], spacing: list[float], work: Path) -> list[dict]:
    from ctp_steps.resources import declared_mem_mb, study_voxel_frames

    cfg = {"results_dir": str(work / "results"),
           "synthetic": {"n_patients": 1, "phantom": {"shape_zyx": shape, "spacing_zyx_mm": spacing,
                                                      "supersample": 1 if shape[1] > 100 else 2}}}
    (work / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
                    "--configfile", str(work / "cfg.yaml"), "--cores", "2", "all"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dicom = next((work / "results" / "synthetic" / "dicom").glob("*/*"))
    voxel_frames = study_voxel_frames(str(dicom))
    rows = []
    for stage in STAGES:
        (bench,) = (work / "results" / "benchmarks" / stage).glob("*/*.tsv")
        with bench.open() as f:
            rec = next(csv.DictReader(f, delimiter="\t"))
        peak, declared = float(rec["max_rss"]), declared_mem_mb(stage, dicom)
        rows.append({"grid": "x".join(map(str, shape)), "voxel_frames_M": voxel_frames / 1e6, "stage": stage,
                     "wall_s": float(rec["s"]), "peak_mb": peak, "declared_mb": declared, "peak/declared": peak / declared})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["40x80x80@3.0x2.5x2.5", "48x160x160@2.5x1.25x1.25"])
    args = parser.parse_args()
    rows = []
    for text in args.sizes:
        with tempfile.TemporaryDirectory(prefix="ctp-resources-") as tmp:
            rows += run_size(*parse_size(text), Path(tmp))
    print("| grid (z×y×x) | voxel-frames (M) | stage | wall s | peak RSS MB | declared mem_mb | peak / declared |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['grid']} | {r['voxel_frames_M']:.1f} | {r['stage']} | {r['wall_s']:.1f} | {r['peak_mb']:.0f} | "
              f"{r['declared_mb']} | {r['peak/declared']:.2f} |")
    worst = max(r["peak/declared"] for r in rows)
    print(f"\nlargest peak/declared: {worst:.2f} ({'within' if worst <= 1 else 'ABOVE'} the declarations)")


if __name__ == "__main__":
    main()
