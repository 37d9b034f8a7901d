"""The SLURM profile against a real single-node SLURM (workflow/slurm/local-cluster.sh).

Needs root and apt (the script installs Debian's slurm, munge and MariaDB packages on
first use). Developers without them may deselect it (`pytest -m "not slurm"`); it then
skips with the reason. Where CI is set (`.ci/run`) it never skips: a missing
prerequisite fails the test.

No rule names are written here: every per-patient rule is in group `patient`, so
whatever stages exist, each patient must be exactly one SLURM job and every other
rule one job of its own.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, tiny_config

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

SCRIPT = REPO / "workflow" / "slurm" / "local-cluster.sh"
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"
LOCAL_PROFILE = REPO / "workflow" / "profiles" / "local"
STATE = Path(os.environ.get("CTP_SLURM_STATE", "/tmp/ctp-slurm"))
N_PATIENTS = 3
TARGETS = ("all",)  # the cohort tables; `validate` would add ~3 SLURM job waves on 2 cores
# Test-only overrides of the profile: poll soon (the plugin's default waits 40 s), and
# the test's file system is local.
FAST_POLLING = ("--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "5")
RUN_TIMEOUT_S = 420
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: ([^)]+)\)")
SLURM_DAEMONS = ("munged", "slurmctld", "slurmd", "slurmdbd", "sinfo", "sbatch", "sacct", "mariadbd")


def _missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the local cluster installs and starts munge, MariaDB, slurmdbd, slurmctld, slurmd"
    installed = all(shutil.which(c) or Path("/usr/sbin", c).exists() for c in SLURM_DAEMONS)
    if not installed and shutil.which("apt-get") is None:
        return "SLURM packages are not installed and apt-get is not available to install them"
    return None


def _cluster_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["SLURM_CONF"] = str(STATE / "etc" / "slurm.conf")
    env["CTP_SLURM_STATE"] = str(STATE)
    return env


def _script(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), command], env=_cluster_env(), capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start the local cluster (install on first use); stop it afterwards if this test started it."""
    reason = _missing_prerequisite()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the SLURM integration test, but it {reason}")
        pytest.skip(reason)
    was_running = _script("status").returncode == 0
    t0 = time.monotonic()
    started = _script("start")
    assert started.returncode == 0, f"local-cluster.sh start failed:\n{started.stdout}\n{started.stderr}"
    print(f"\nlocal SLURM up in {time.monotonic() - t0:.1f} s (already running: {was_running})")
    yield _cluster_env()
    if not was_running:
        t0 = time.monotonic()
        stopped = _script("stop")
        print(f"\nlocal SLURM stopped in {time.monotonic() - t0:.1f} s")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def _snakemake(workdir: Path, args: list[str], env: dict[str, str], timeout: int = RUN_TIMEOUT_S):
    """Run Snakemake in its own process group, so a hung run (e.g. a status query that
    never returns) is killed whole, and its SLURM jobs cancelled, instead of hanging CI."""
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(workdir), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        ids = SUBMITTED.findall(out + err)
        if ids:
            subprocess.run(["scancel", *[i for i, _ in ids]], env=env, capture_output=True)
        raise AssertionError(f"snakemake ran over {timeout} s:\n{out[-3000:]}\n{err[-6000:]}") from None
    assert proc.returncode == 0, f"snakemake failed ({proc.returncode}):\n{out[-3000:]}\n{err[-8000:]}"
    return out + err


def _sacct(env: dict[str, str], *args: str) -> list[list[str]]:
    res = subprocess.run(["sacct", "-X", "-n", "-P", *args], env=env, capture_output=True, text=True, check=True)
    return [line.split("|") for line in res.stdout.splitlines() if line.strip()]


def _write_config(workdir: Path, **overrides) -> Path:
    import yaml

    workdir.mkdir(parents=True, exist_ok=True)
    # results_dir relative to each run's own --directory, so both runs have the same
    # config (and config_hash column) and the tables can be compared cell for cell.
    path = workdir / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(Path("results"), n_patients=N_PATIENTS, **overrides)))
    return path


def _sorted_table(path: Path) -> pd.DataFrame:
    table = pd.read_parquet(path)
    keys = [c for c in ("center", "patient_id", "stage", "metric", "target") if c in table.columns]
    return table.sort_values(keys).reset_index(drop=True)


@pytest.fixture(scope="module")
def slurm_and_local_runs(slurm_cluster, tmp_path_factory):
    env = slurm_cluster
    local_dir = tmp_path_factory.mktemp("local-run")
    slurm_dir = tmp_path_factory.mktemp("slurm-run")

    t0 = time.monotonic()
    _snakemake(local_dir, [*TARGETS, "-s", str(REPO / "Snakefile"), "--workflow-profile", str(LOCAL_PROFILE),
                           "--configfile", str(_write_config(local_dir)), "--cores", "2"],
               {k: v for k, v in env.items() if k != "SLURM_CONF"})
    local_s = time.monotonic() - t0

    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    t0 = time.monotonic()
    log = _snakemake(slurm_dir, [*TARGETS, "-s", str(REPO / "Snakefile"), "--workflow-profile", str(SLURM_PROFILE),
                                 "--configfile", str(_write_config(slurm_dir)), *FAST_POLLING], env)
    slurm_s = time.monotonic() - t0
    print(f"\ntiny cohort ({N_PATIENTS} patients): local {local_s:.1f} s, SLURM {slurm_s:.1f} s")
    return {"local": local_dir, "slurm": slurm_dir, "log": log, "since": since, "env": env}


def test_slurm_tables_equal_local(slurm_and_local_runs):
    local, slurm = slurm_and_local_runs["local"], slurm_and_local_runs["slurm"]
    for table in ("cohort/patients.parquet",):
        left, right = _sorted_table(local / "results" / table), _sorted_table(slurm / "results" / table)
        assert len(right) > 0, table
        pd.testing.assert_frame_equal(left, right, check_exact=True, obj=table)
    patients = _sorted_table(slurm / "results" / "cohort" / "patients.parquet")
    assert len(patients) == N_PATIENTS


def test_one_slurm_job_per_patient_group(slurm_and_local_runs):
    log, env = slurm_and_local_runs["log"], slurm_and_local_runs["env"]
    submitted = SUBMITTED.findall(log)
    assert submitted, "no SLURM submission in the log:\n" + log[-3000:]
    kinds = {}
    for jobid, logfile in submitted:
        kind = Path(logfile).relative_to(Path(slurm_and_local_runs["slurm"]) / ".snakemake" / "slurm_logs").parts[0]
        kinds[jobid] = kind
    groups = [k for k in kinds.values() if k.startswith("group_patient")]
    singles = Counter(k for k in kinds.values() if not k.startswith("group_"))
    # One job per patient, whatever per-patient stages exist (group-components patient=1) ...
    assert len(groups) == N_PATIENTS, kinds
    # ... and a rule outside the group is a cohort rule: one job. A per-patient rule that
    # forgot `group: "patient"` would show up here once per patient.
    assert all(n == 1 for n in singles.values()), f"rules submitted per patient, not grouped: {singles}"

    rows = _sacct(env, "-j", ",".join(kinds), "-o", "JobID,JobName,State,AllocTRES")
    assert sorted(r[0] for r in rows) == sorted(kinds), rows
    assert {r[2] for r in rows} == {"COMPLETED"}, rows
    run_names = {r[1] for r in rows}
    assert len(run_names) == 1, rows  # the plugin names every job of a run by the run's UUID
    # Accounting saw no other job of this run than those Snakemake reported.
    same_run = _sacct(env, "--name", run_names.pop(), "-S", slurm_and_local_runs["since"], "-o", "JobID")
    assert sorted(r[0] for r in same_run) == sorted(kinds)


GPU_SNAKEFILE = """
PATIENTS = ["P1", "P2", "P3", "P4"]
rule all:
    input: expand("out/{p}.infer", p=PATIENTS)
rule prep:
    output: "out/{p}.prep"
    group: "patient"
    shell: "echo $SLURM_JOB_ID > {output}"
rule infer:
    input: "out/{p}.prep"
    output: "out/{p}.infer"
    group: "patient"
    resources: gpu=1
    shell: "echo $SLURM_JOB_ID ${{CUDA_VISIBLE_DEVICES-none}} > {output}"
"""


def test_gpu_request_and_patients_per_job(slurm_cluster, tmp_path):
    """`gpu=1` becomes `--gpus=1` on the fake-GPU node; CTP_PATIENTS_PER_JOB bundles patients
    and a bundle still asks for one GPU (the profile scopes `gpu` per submitted job)."""
    (tmp_path / "Snakefile").write_text(GPU_SNAKEFILE)
    env = {**slurm_cluster, "CTP_PATIENTS_PER_JOB": "2"}
    log = _snakemake(tmp_path, ["-s", str(tmp_path / "Snakefile"), "--workflow-profile", str(SLURM_PROFILE),
                                *FAST_POLLING, "--verbose"], env)
    calls = [line for line in log.splitlines() if line.startswith("sbatch call:")]
    assert len(calls) == 2, calls  # 4 patients, 2 per job
    for call in calls:
        partition = os.environ.get("CTP_SLURM_PARTITION", "ctp")
        assert " --gpus=1 " in call and f" -p {partition} " in call and "--mem " in call, call
    ids = [jobid for jobid, _ in SUBMITTED.findall(log)]
    rows = _sacct(slurm_cluster, "-j", ",".join(ids), "-o", "JobID,State,AllocTRES")
    assert all(r[1] == "COMPLETED" and "gres/gpu=1" in r[2] for r in rows), rows
    outputs = {p.name: p.read_text().split() for p in (tmp_path / "out").iterdir()}
    assert all(v[1] == "0" for k, v in outputs.items() if k.endswith(".infer")), outputs  # CUDA_VISIBLE_DEVICES
    assert len({v[0] for v in outputs.values()}) == 2  # two SLURM jobs ran all eight rule jobs
