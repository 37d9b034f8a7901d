"""Command line of the stages: what Snakemake's thin rules call (`python -m ctp_steps ...`).

Every per-patient stage runs through `ctp-steps run <stage>` (`commands/stage.py`,
the contract in `ctp_steps/stages.py`); the other subcommands (training,
shipping, validation, gather, risk, synthetic) live in `ctp_steps/commands/*.py`
(found automatically; a module defines `register(subparsers)`), with heavy
imports inside the handlers so `--help` and planning stay fast.

Every per-patient stage follows one contract (`run_patient_stage`): a known
input problem (PatientInputError) writes the stage's status record with the
reason (`excluded`) and empty placeholder outputs, except the QC figure, which
the error's `diagnostic` draws (what the stage saw, titled with the reason)
when the stage gave one, and exits 0 so the rest of
the cohort goes on; any other exception ends that patient as `failed`, with the
exception and the log's path in the reason, and the cohort goes on too. The
run stays loud about failures: the summary lists them first and the run exits
non-zero after writing the tables (config `fail_on_patient_errors`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("ctp_steps")


def run_patient_stage(
    stage: str,
    status_path: Path,
    outputs: list[Path],
    upstream_statuses: list[Path],
    work: Callable[[], dict | None],
) -> None:
    """Run `work` unless an upstream stage excluded the patient; record the outcome.

    `work` returns the stage's figures for the cohort table (or None). A known
    input problem excludes the patient; any other exception fails the patient,
    not the cohort: the traceback goes to the job's log, the status says
    `failed` with the exception and the log's path, and the job exits 0 so the
    gather and risk stages still run (the run summary lists failed patients first).
    """
    from ctp_steps.io import require_ok, write_status
    from ctp_steps.types import PatientInputError, StageStatus, UpstreamExcluded

    try:
        for upstream in upstream_statuses:
            require_ok(upstream)
        record = work() or {}
    except UpstreamExcluded as exc:
        _give_up(status_path, outputs, StageStatus(stage, exc.status, str(exc)))
        return
    except PatientInputError as exc:
        reason = _patient_reason(f"{stage}: {exc}", status_path)
        log.warning("patient excluded: %s", reason)
        _give_up(status_path, outputs, StageStatus(stage, "excluded", reason))
        _draw_diagnostic(exc, outputs, reason)
        return
    except Exception as exc:  # noqa: BLE001 - contained on purpose: one patient must not stop the cohort
        reason = _patient_reason(
            f"{stage}: failed with {type(exc).__name__}: {exc} (log: {patient_log(status_path)})", status_path
        )
        log.error("patient failed: %s\n%s", reason, _scrubbed_traceback(exc, status_path))
        _give_up(status_path, outputs, StageStatus(stage, "failed", reason))
        return
    write_status(status_path, StageStatus(stage, "ok", record=record))


def _give_up(status_path: Path, outputs: list[Path], status) -> None:
    """Empty placeholders for the outputs (Snakemake needs them) and the status record."""
    from ctp_steps.io import write_status

    for out in outputs:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"")
    write_status(status_path, status)


def qc_figure_of(outputs: list[Path]) -> Path | None:
    """The stage's QC figure: its PNG output (every stage has at most one), or None."""
    return next((out for out in outputs if out.suffix.lower() == ".png"), None)


def _draw_diagnostic(exc: BaseException, outputs: list[Path], reason: str) -> None:
    """Replace the QC figure's placeholder by the excluding stage's own figure, titled with the stored reason.

    A user sees why from the figure; drawing it must never turn an exclusion into a failure, so a
    broken diagnostic is logged and the empty placeholder stays.
    """
    diagnostic, figure = getattr(exc, "diagnostic", None), qc_figure_of(outputs)
    if diagnostic is None or figure is None:
        return
    try:
        diagnostic(figure, reason)
    except Exception as err:  # noqa: BLE001 - the exclusion and its reason stand without the figure
        log.warning("no QC figure of the exclusion: %s: %s", type(err).__name__, err)
        figure.write_bytes(b"")


def results_root(status_path: Path) -> Path:
    """`<results>` of `<results>/patients/<center>/<patient>/<stage>.status.json`."""
    return status_path.resolve().parents[3]


def patient_log(status_path: Path) -> str:
    """The job's log, relative to the results folder (the rules' `log:` follows `layout.patient_log`)."""
    from ctp_steps.layout import patient_log as log_of, stage_of_status

    return log_of(stage_of_status(status_path), status_path.parent.parent.name, status_path.parent.name)


def _patient_reason(text: str, status_path: Path) -> str:
    from ctp_steps.reasons import safe_reason

    return safe_reason(text, {results_root(status_path): "<results>"})


def _scrubbed_traceback(exc: BaseException, status_path: Path) -> str:
    """The traceback's code locations (no source lines, no locals) and the scrubbed message: logs reach users too."""
    import traceback

    frames = "".join(
        f"  {Path(f.filename).name}:{f.lineno} in {f.name}\n" for f in traceback.extract_tb(exc.__traceback__)
    )
    return f"{frames}{_patient_reason(f'{type(exc).__name__}: {exc}', status_path)}"


def build_parser() -> argparse.ArgumentParser:
    from ctp_steps import commands

    parser = argparse.ArgumentParser(prog="ctp-steps", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        importlib.import_module(f"ctp_steps.commands.{module}").register(sub)
    return parser


def keep_freed_memory_for_reuse() -> bool:
    """Have glibc's malloc keep freed memory in the process instead of handing it back to the kernel.

    A stage allocates and frees the same large arrays over and over (a net's layer outputs, the frames'
    resampled copies); by default glibc serves blocks above a threshold that starts at 128 kB with fresh
    mmap's and trims the heap top on every free, so each reuse pays page faults and zeroing in the kernel:
    a quarter of `segment_frames`' CPU time was system time (BENCHMARKS.md, "Start-up and allocator, per
    stage"). The mmap threshold at its 32 MiB ceiling and trimming only above 256 MiB of free heap keep that
    memory mapped; blocks above 32 MiB are still mmap'd and at most 256 MiB of freed heap stays resident, so
    the peak RSS barely moves.
    False where the C library is not glibc (nothing changes).
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(libc.mallopt(m_trim_threshold, 256 * 2**20)) and bool(libc.mallopt(m_mmap_threshold, 32 * 2**20))


def main(argv: list[str] | None = None) -> None:
    keep_freed_memory_for_reuse()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.func(args)
