"""Per-stage wall time, CPU time and peak RSS of one patient's chain under two code trees, alternating.

The commands are each tree's own workflow's (`snakemake -s <tree>/Snakefile -n -p` of the patient's chain in a
finished run's directory: its config, its models); each tree runs them with `PYTHONPATH=<tree>`, so start-up,
imports and allocator behaviour of the two versions meet the same inputs. The outputs are overwritten in place (same inputs, same
numbers), so point it at a scratch copy of a run.

    python benchmarks/stage_startup.py --workdir /tmp/run --patient CTR-A/S0001 \
        --trees today=/tmp/worktree-of-main new=. --repeats 3
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

STAGES = ("convert", "segment_frames", "register", "segment_myocardium", "landmarks", "mbf", "imv")


def stage_commands(tree: Path, workdir: Path, patient: str) -> dict[str, list[str]]:
    """`ctp-steps run <stage> ...` arguments of the patient's chain, as `tree`'s workflow would run them now."""
    target = f"results/patients/{patient}/imv.status.json"
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(tree / "Snakefile"), "-d", str(workdir), "-n", "-p",
         "--forcerun", *STAGES, "--cores", "1", target],
        capture_output=True, text=True, check=True, env=_env(tree),
    ).stdout
    commands = {}
    for line in out.splitlines():
        m = re.search(r"ctp-steps (run (\S+) .*?) > \S+ 2>&1", line)
        if m and m.group(2) in STAGES:
            commands[m.group(2)] = shlex.split(m.group(1))
    return commands


def _env(tree: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(tree), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}


def timed(tree: Path, args: list[str], workdir: Path) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of `python -m ctp_steps <args>` with `tree` first on the path."""
    res = subprocess.run(
        ["/usr/bin/time", "-f", "%e %U %S %M", sys.executable, "-m", "ctp_steps", *args],
        cwd=workdir, env=_env(tree), capture_output=True, text=True, check=True,
    )
    wall, user, system, rss_kb = res.stderr.strip().splitlines()[-1].split()
    return float(wall), float(user) + float(system), float(rss_kb) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True, help="Snakemake directory of a finished run (a copy)")
    ap.add_argument("--patient", required=True, help="center/patient")
    ap.add_argument("--trees", nargs=2, required=True, help="name=path of the baseline and the candidate tree")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    trees = [(n, Path(p).resolve()) for n, p in (t.split("=", 1) for t in a.trees)]
    commands = {name: stage_commands(tree, a.workdir, a.patient) for name, tree in trees}
    runs: dict[tuple[str, str], list[tuple[float, float, float]]] = defaultdict(list)
    for _ in range(a.repeats):
        for stage in STAGES:
            for name, tree in trees:
                runs[(stage, name)].append(timed(tree, commands[name][stage], a.workdir))
    (b, _), (c, _) = trees
    print(f"| stage | {b} s | {c} s | speed-up | {b} CPU s | {c} CPU s | {b} peak MB | {c} peak MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    total = defaultdict(float)
    for stage in STAGES:
        mean = {n: [sum(r[i] for r in runs[(stage, n)]) / a.repeats for i in range(3)] for n, _ in trees}
        for n in mean:
            total[n] += mean[n][0]
        print(f"| {stage} | {mean[b][0]:.2f} | {mean[c][0]:.2f} | {mean[b][0] / mean[c][0]:.2f}× | "
              f"{mean[b][1]:.2f} | {mean[c][1]:.2f} | {mean[b][2]:.0f} | {mean[c][2]:.0f} |")
    print(f"| chain | {total[b]:.1f} | {total[c]:.1f} | {total[b] / total[c]:.2f}× | | | | |")


if __name__ == "__main__":
    main()
