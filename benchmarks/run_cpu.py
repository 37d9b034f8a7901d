"""Wall time and CPU of a Snakemake run, split into Snakemake's own process and its jobs.

    .venv/bin/python benchmarks/run_cpu.py --workflow-profile workflow/profiles/local   # any snakemake arguments

Runs Snakemake in this process (`snakemake.cli.main`) and reads `getrusage` for it and for its children at the
end, so the scheduler's own cost shows apart from the jobs' (BENCHMARKS.md, "Main job").
"""

from __future__ import annotations

import atexit
import resource
import sys
import time


def _report(start: float) -> None:
    own = resource.getrusage(resource.RUSAGE_SELF)
    jobs = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"WALL {time.time() - start:.1f} SELF user {own.ru_utime:.1f} sys {own.ru_stime:.1f} "
          f"CHILDREN user {jobs.ru_utime:.1f} sys {jobs.ru_stime:.1f}", file=sys.stderr)


if __name__ == "__main__":
    from snakemake.cli import main

    atexit.register(_report, time.time())
    sys.argv = ["snakemake", *sys.argv[1:]]
    main()
