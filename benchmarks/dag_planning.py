"""How long Snakemake takes to plan a big user-manifest cohort, and how much memory.

    .venv/bin/python benchmarks/dag_planning.py                 # 1,000 and 5,000 patients
    .venv/bin/python benchmarks/dag_planning.py 1000 5000 20000
    .venv/bin/python benchmarks/dag_planning.py --modes plain recommended --keep /tmp/dag-bench

For each N it writes a manifest of N fake patients (empty DICOM folders: nothing is
read at planning time) and times `snakemake -n --quiet` of the real Snakefile in a
fresh process per mode, twice per mode where `--repeat 2` is given. Peak memory is
the child's maximum resident set (wait4). Prints a markdown table for BENCHMARKS.md.

Modes (extra Snakemake arguments; see MODES): `plain` is what a user types without the
project's profiles; `recommended` adds what README's "Huge cohorts" section recommends.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
N_CENTERS = 8

PATIENTS_PER_BATCH = 2500


def batches(n: int, per_batch: int = PATIENTS_PER_BATCH) -> int:
    return max(1, math.ceil(n / per_batch))


def mode_args(mode: str, n: int, per_batch: int) -> list[str]:
    if mode == "plain":
        return []
    # README "Huge cohorts": greedy scheduling, and the cohort planned and run in batches
    # of the gather's inputs (`--batch gather_patients=i/B`, i = 1..B, B = N / 2,500).
    # Each invocation plans only its batch's patient chains; the last one runs the gather.
    return ["--scheduler", "greedy", "--batch", f"gather_patients=1/{batches(n, per_batch)}"]


MODES = ("plain", "recommended")


def write_cohort(root: Path, n: int) -> Path:
    """N empty DICOM folders in N_CENTERS centers and a valid manifest (with covariates)."""
    rows = []
    for i in range(n):
        center = f"C{i % N_CENTERS:02d}"
        pid = f"P{i:06d}"
        d = root / "dicom" / center / pid
        d.mkdir(parents=True, exist_ok=True)
        rows.append({
            "patient_id": pid, "center": center, "dicom_dir": f"dicom/{center}/{pid}",
            "followup_days": 100 + i % 1000, "event": i % 2, "age": 50 + i % 30, "sex": i % 2,
            "diabetes": i % 3 == 0, "hypertension": i % 2, "smoking": i % 5 == 0,
        })
    for r in rows:
        r["diabetes"] = int(r["diabetes"])
        r["smoking"] = int(r["smoking"])
    manifest = root / "cohort.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def plan_once(repo: Path, root: Path, manifest: Path | None, extra: list[str], timeout: float, config: list[str]) -> dict:
    """One `snakemake -n --quiet` in a fresh process: seconds, peak RSS (MB), job count."""
    config = [f"manifest={manifest}", *config] if manifest else config
    cmd = [
        sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(root),
        "-n", "--quiet", "rules", "--cores", "2", *extra,
        "--config", f"results_dir={root / 'results'}", *config,
    ]
    with tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(repo)}  # the package of the planned tree
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=root, env=env)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # rusage of this child only
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                return {"seconds": None, "peak_mb": usage.ru_maxrss / 1024, "jobs": None, "error": "timeout"}
            time.sleep(0.02)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        out = log.read()
    if proc.returncode != 0:
        return {"seconds": seconds, "peak_mb": usage.ru_maxrss / 1024, "jobs": None, "error": out[-2000:]}
    jobs = None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total" and parts[1].isdigit():
            jobs = int(parts[1])
    return {"seconds": seconds, "peak_mb": usage.ru_maxrss / 1024, "jobs": jobs, "error": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sizes", nargs="*", type=int, default=[1000, 5000])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--per-batch", type=int, default=PATIENTS_PER_BATCH, help="patients per batch (recommended)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="more --config entries, e.g. \"stages={segment_frames: vbnet, ...}\"")
    ap.add_argument("--repeat", type=int, default=1, help="runs per mode and size (the best is reported)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds before a plan is given up")
    ap.add_argument("--cohort", choices=["manifest", "synthetic"], default="manifest",
                    help="a user manifest of empty DICOM folders (default), or the synthetic cohort of N "
                         "patients (its whole chain is planned: oracle stand-ins need no weights)")
    ap.add_argument("--repo", type=Path, default=REPO,
                    help="workflow tree to plan (e.g. a `git archive HEAD` snapshot); default: this one")
    ap.add_argument("--keep", type=Path, help="build cohorts here and keep them (default: a temp dir)")
    args = ap.parse_args()

    base = args.keep or Path(tempfile.mkdtemp(prefix="ctp-dag-bench-"))
    rows = []
    try:
        for n in args.sizes:
            root = base / f"n{n}"
            if root.exists() and not args.keep:
                shutil.rmtree(root)
            root.mkdir(parents=True, exist_ok=True)
            manifest = root / "cohort.csv"
            config = list(args.set)
            cohort_args: list[str] = []
            if args.cohort == "synthetic":
                # a config file: --config would pass the nested value as a string
                (root / "synthetic.yaml").write_text(f"synthetic:\n  n_patients: {n}\n")
                manifest, cohort_args = None, ["--configfile", str(root / "synthetic.yaml")]
            elif not manifest.exists():
                t0 = time.perf_counter()
                write_cohort(root, n)
                print(f"# {n:,} patients: cohort written in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            for mode in args.modes:
                extra = [*cohort_args, *mode_args(mode, n, args.per_batch)]
                results = [plan_once(args.repo.resolve(), root, manifest, extra, args.timeout, config) for _ in range(args.repeat)]
                ok = [r for r in results if r["error"] is None]
                best = min(ok, key=lambda r: r["seconds"]) if ok else results[0]
                rows.append((n, mode, best, extra))
                status = f"{best['seconds']:.1f} s" if best["seconds"] else best["error"]
                print(f"# {n:,} {mode}: {status}, {best['peak_mb']:.0f} MB, {best['jobs']} jobs", file=sys.stderr)
                if best["error"]:
                    print("\n".join(best["error"].strip().splitlines()[-15:]), file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    what = "user manifest of empty DICOM folders" if args.cohort == "manifest" else "synthetic cohort"
    print(f"### DAG planning (`snakemake -n --quiet`, {what}, no outputs yet)\n")
    print(f"{platform.node()}: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at the end, Python "
          f"{platform.python_version()}; best of {args.repeat}; "
          f"`benchmarks/dag_planning.py {' '.join(map(str, args.sizes))} --cohort {args.cohort}`"
          + (f" with `--config {' '.join(args.set)}`" if args.set else "") + ".\n")
    print("- `plain`: `snakemake -n --quiet` on the whole cohort.")
    print(f"- `recommended`: `--scheduler greedy --batch gather_patients=i/B`, B = ⌈N / {args.per_batch:,}⌉; "
          "one invocation (batch 1) is timed; all B batches plan about B times that.\n")
    print("| patients | mode | jobs planned | time (s) | peak memory (MB) | batches | all batches (s, est.) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n, mode, r, extra in rows:
        ok = r["error"] is None
        t = f"{r['seconds']:.1f}" if ok else r["error"].strip().splitlines()[-1][:60]
        b = batches(n, args.per_batch) if mode != "plain" else 1
        total = f"{r['seconds'] * b:.0f}" if ok and b > 1 else "—"
        jobs = f"{r['jobs']:,}" if r["jobs"] is not None else "—"
        print(f"| {n:,} | {mode} | {jobs} | {t} | {r['peak_mb']:.0f} | {b} | {total} |")


if __name__ == "__main__":
    main()
