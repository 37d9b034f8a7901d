"""Rerun only what changed: Snakemake's own plan (dry runs) after the changes users make.

Everything runs on a copy of the workflow in a temporary folder (Snakefile, rules,
config, the `ctp_steps` package, envs, models), used through PYTHONPATH, so a stage's
source can be edited without touching the real tree; the stage fingerprints in
`params:` then hash the copy's modules.

No stage is named where it need not be. "That stage and what follows" is Snakemake's
own `--forcerun STAGE` plan on the up-to-date workspace, so stages added later are
covered as they land:
- nothing changed → nothing to do (no random or time-dependent params);
- editing ctp_steps/convert → convert for every patient and what follows, no
  synthesize_patient; editing any other module that a rule's command can import (the
  import closure of its `code_fingerprint("<subcommand>")` in `rules/**/*.smk`) → only
  rules whose closure holds it change params, every patient, and the plan is exactly
  `--forcerun <those rules>` (one module per distinct set of rules, plus models.py,
  which no hand-kept list used to name);
- each entry of CONFIG_CHANGES (an IMV threshold, the MBF method, ...) → exactly
  `--forcerun <its stage>`;
- replacing a model weight file (any under `models/` that a rule reads) → exactly
  `--forcerun <the rules that read it>`;
- a new patient (synthetic n_patients 3 → 4, or a manifest row) → only that patient's
  chain plus the cohort rules;
- one patient's DICOM folder replaced → only that patient's chain plus the cohort rules;
- README's batched mode (`--batch gather_patients=i/B`) → the same cohort table.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, tiny_config

pytestmark = pytest.mark.workflow

N_PATIENTS = 3
TARGETS = ("all", "validate")
# What the workflow needs at planning and run time; the copy is used via PYTHONPATH.
COPIED = ("Snakefile", "rules", "config", "ctp_steps", "envs", "models", "workflow", "pyproject.toml")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".snakemake", "results")

# (config section, its changed values, the stage that must rerun with what follows).
# Add one line per threshold users tune (e.g. the IMV threshold → the IMV stage).
CONFIG_CHANGES = [
    ("conversion", {"min_frames": 9}, "convert"),
    ("imv", {"threshold_abs": 90.0}, "imv"),
    ("mbf", {"method": "upslope"}, "mbf"),
]
WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".onnx", ".npz")


# ------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class PlannedJob:
    rule: str
    wildcards: tuple[tuple[str, str], ...]
    reason: str

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return self.rule, self.wildcards

    @property
    def patient(self) -> str | None:
        return dict(self.wildcards).get("patient")


_RULE_LINE = re.compile(r"^\s*(?:local)?(?:rule|checkpoint) (\w+):\s*$")
_FIELD_LINE = re.compile(r"^\s*(wildcards|reason): (.*)$")


def parse_plan(text: str) -> list[PlannedJob]:
    """Jobs of a `snakemake -n` printout (plain or grouped blocks)."""
    jobs, current = [], None
    for line in text.splitlines():
        if m := _RULE_LINE.match(line):
            if current:
                jobs.append(current)
            current = {"rule": m.group(1), "wildcards": "", "reason": ""}
        elif current and (m := _FIELD_LINE.match(line)):
            current[m.group(1)] = m.group(2).strip()
    if current:
        jobs.append(current)
    return [
        PlannedJob(
            j["rule"],
            tuple(sorted(tuple(kv.split("=", 1)) for kv in j["wildcards"].split(", ") if "=" in kv)),
            j["reason"],
        )
        for j in jobs
    ]


def keys(plan: list[PlannedJob]) -> set:
    return {j.key for j in plan}


def rules_of(plan: list[PlannedJob]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for j in plan:
        counts[j.rule] = counts.get(j.rule, 0) + 1
    return dict(sorted(counts.items()))


# ------------------------------------------------------------------ workspace
@dataclass
class Workspace:
    repo: Path  # the copy of the workflow
    work: Path  # --directory
    config: dict
    targets: tuple[str, ...]
    ran_rules: set[str] = field(default_factory=set)  # rules of the real run
    _forcerun_cache: dict = field(default_factory=dict)

    def snakemake(self, *args: str, config: dict | None = None, check: bool = True) -> str:
        configfile = self.work / "rerun-test-config.yaml"
        configfile.write_text(yaml.safe_dump(config or self.config))
        cmd = [
            sys.executable, "-m", "snakemake", "-s", str(self.repo / "Snakefile"),
            "--directory", str(self.work), "--configfile", str(configfile),
            "--cores", "2", "--scheduler", "greedy", *args,
        ]
        # cwd outside the real tree: `python -m` puts the cwd first on sys.path.
        env = {**os.environ, "PYTHONPATH": str(self.repo)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=self.work)
        out = proc.stdout + proc.stderr
        if check and proc.returncode != 0:
            raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{out[-8000:]}")
        return out

    def plan(self, *args: str, config: dict | None = None) -> list[PlannedJob]:
        return parse_plan(self.snakemake("-n", *self.targets, *args, config=config))

    def forcerun(self, *rules_or_files: str, cache: bool = False) -> list[PlannedJob]:
        """Snakemake's "this and what follows" on the current state (cache: the state is
        the up-to-date run, restored after each change)."""
        if not cache:
            return self.plan("--forcerun", *rules_or_files)
        key = tuple(sorted(rules_or_files))
        if key not in self._forcerun_cache:
            self._forcerun_cache[key] = self.plan("--forcerun", *key)
        return self._forcerun_cache[key]


def copy_workflow(dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=IGNORED)
        elif src.exists():
            shutil.copy2(src, dst / name)
    return dst


def assert_uses_copy(repo_copy: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import ctp_steps.fingerprints as f; print(f.PACKAGE_DIR)"],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(repo_copy)},
        cwd=repo_copy.parent,
    ).stdout.strip()
    assert Path(out) == repo_copy / "ctp_steps", f"PYTHONPATH copy not used: ctp_steps from {out}"


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    copy = copy_workflow(tmp_path_factory.mktemp("rerun") / "repo")
    assert_uses_copy(copy)
    return copy


@pytest.fixture(scope="module")
def synthetic_ws(repo_copy, tmp_path_factory) -> Workspace:
    """The tiny synthetic cohort, run for real once (all + validate)."""
    work = tmp_path_factory.mktemp("rerun-synthetic")
    ws = Workspace(repo_copy, work, tiny_config(work / "results", n_patients=N_PATIENTS), TARGETS)
    ws.ran_rules = {j.rule for j in parse_plan(ws.snakemake(*TARGETS))}
    assert {"convert", "gather_patients"} <= ws.ran_rules, ws.ran_rules
    return ws


@pytest.fixture(scope="module")
def manifest_ws(synthetic_ws, tmp_path_factory) -> Workspace:
    """A user manifest over copies of the synthetic DICOM folders (as a site would deliver them)."""
    work = tmp_path_factory.mktemp("rerun-manifest")
    synthetic = synthetic_ws.work / "results" / "synthetic"
    table = pd.read_csv(synthetic / "manifest.csv")
    site = work / "site"
    dirs = []
    for row in table.itertuples():
        src = synthetic / row.dicom_dir
        dst = site / row.center / row.patient_id
        _fresh_copy(src, dst)
        dirs.append(str(dst))
    table["dicom_dir"] = dirs
    table.to_csv(work / "cohort.csv", index=False)
    cfg = tiny_config(work / "results", n_patients=N_PATIENTS, manifest=str(work / "cohort.csv"))
    ws = Workspace(synthetic_ws.repo, work, cfg, ("all",))
    ws.snakemake("all")
    return ws


def _fresh_copy(src: Path, dst: Path) -> None:
    """Copy a DICOM folder tree with new timestamps, as a fresh export would have (no
    Snakemake marker file). Folders may nest (e.g. one series folder per frame)."""
    for folder, _, files in os.walk(src):
        target = dst / Path(folder).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            if name != ".snakemake_timestamp":
                shutil.copyfile(Path(folder) / name, target / name)


def per_patient_jobs_per_patient(ws: Workspace) -> int:
    full = ws.plan("--forceall")
    per_patient = [j for j in full if j.patient]
    assert len(per_patient) % N_PATIENTS == 0, rules_of(per_patient)
    return len(per_patient) // N_PATIENTS


# Cohort rules that record the run rather than compute from a stage: `provenance` writes the effective config
# and the versions; its import closure holds config.py, which imports every stage's config model, so an edit
# of a module reachable from there re-records it (a one-second job) without being downstream of that stage.
RECORDING_RULES = {"provenance"}


def assert_stage_and_downstream(plan: list[PlannedJob], expected: list[PlannedJob], roots: set[str]) -> None:
    assert expected, "the --forcerun plan is empty: the stage is not part of the targets"
    recorded = [j for j in plan if j.rule in RECORDING_RULES and j.key not in keys(expected)]
    assert all("Params have changed" in j.reason for j in recorded), [(j.rule, j.reason) for j in recorded]
    plan = [j for j in plan if j not in recorded]
    assert keys(plan) == keys(expected), (
        f"planned {rules_of(plan)}\nexpected (forcerun {sorted(roots)}) {rules_of(expected)}\n"
        f"extra: {sorted(keys(plan) - keys(expected))[:10]}\nmissing: {sorted(keys(expected) - keys(plan))[:10]}"
    )


# ------------------------------------------------------------------ stage code → rules
_FINGERPRINT_CALL = re.compile(r"code_fingerprint\(\s*[\"']([^\"']+)[\"']\s*\)")
# a per-patient stage's `stage_fingerprint("<stage>")` or `stage_fingerprint("<stage>", "oracle")`
_STAGE_FINGERPRINT_CALL = re.compile(r"stage_fingerprint\(\s*[\"'](\w+)[\"']\s*(?:,\s*[\"'](\w+)[\"']\s*)?\)")


@functools.cache  # the real tree's rules and sources do not change during a test session
def fingerprinted_sources() -> dict[str, set[str]]:
    """rule name → package files its `code_fingerprint("<subcommand>")` or `stage_fingerprint("<stage>"[, impl])`
    hashes (the import closure).

    Handles the call inside the rule and a module-level `NAME = code_fingerprint(...)`
    used by the rule. A rule name defined in several .smk files (one per stage method)
    gets the union.
    """
    from ctp_steps.fingerprints import PACKAGE_DIR, command_sources, stage_sources

    def files(subcommand: str) -> set[str]:
        return {p.relative_to(PACKAGE_DIR).as_posix() for p in command_sources(subcommand)}

    def stage_files(stage: str, implementation: str) -> set[str]:
        return {p.relative_to(PACKAGE_DIR).as_posix() for p in stage_sources(stage, implementation or None)}

    texts = {smk: smk.read_text() for smk in sorted((REPO / "rules").rglob("*.smk"))}
    variables: dict[str, set[str]] = {}
    for text in texts.values():
        for m in re.finditer(r"^(\w+)\s*=\s*code_fingerprint\(\s*[\"']([^\"']+)[\"']\s*\)", text, flags=re.M):
            variables[m.group(1)] = files(m.group(2))
    out: dict[str, set[str]] = {}
    for text in texts.values():
        blocks = re.split(r"^(?:rule|checkpoint) (\w+):", text, flags=re.M)
        for name, body in zip(blocks[1::2], blocks[2::2]):
            sources = out.setdefault(name, set())
            for subcommand in _FINGERPRINT_CALL.findall(body):
                sources |= files(subcommand)
            for stage, implementation in _STAGE_FINGERPRINT_CALL.findall(body):
                sources |= stage_files(stage, implementation)
            for var, var_sources in variables.items():
                if re.search(rf"\b{var}\b", body):
                    sources |= var_sources
    return {rule: sources for rule, sources in out.items() if sources}


def candidates(relpath: str) -> set[str]:
    """Rules whose fingerprint covers this package file (in any of their .smk definitions)."""
    return {rule for rule, sources in fingerprinted_sources().items() if relpath in sources}


def _one_file_per_rule() -> list[str]:
    """For each fingerprinted rule, the file that the fewest other rules can import (the most specific one):
    the mechanism is the same for every file, what differs is which stages a file belongs to."""
    owners = {f: candidates(f) for sources in fingerprinted_sources().values() for f in sources}
    chosen = {min(sorted(f for f, rules in owners.items() if rule in rules), key=lambda f: len(owners[f]))
              for rule in fingerprinted_sources()}
    # models.py was named by no hand-kept list before fingerprints came from imports: keep it a case
    return sorted({*chosen, "models.py"})


STAGE_FILES = _one_file_per_rule()


# ------------------------------------------------------------------ tests
def test_nothing_changed_nothing_to_do(synthetic_ws):
    out = synthetic_ws.snakemake("-n", *TARGETS)
    assert "Nothing to be done" in out, out[-3000:]
    assert parse_plan(out) == []


def test_convert_code_edit_reruns_convert_and_downstream_only(synthetic_ws):
    """The brief's named case: a comment appended to the conversion module (ctp_steps/convert)."""
    from ctp_steps.fingerprints import PACKAGE_DIR, module_file

    expected = synthetic_ws.forcerun("convert")
    module = synthetic_ws.repo / "ctp_steps" / module_file("ctp_steps.convert").relative_to(PACKAGE_DIR)
    original = module.read_bytes()
    try:
        module.write_bytes(original + b"\n# edited by test_reruns\n")
        plan = synthetic_ws.plan()
    finally:
        module.write_bytes(original)
    assert_stage_and_downstream(plan, expected, {"convert"})
    counts = rules_of(plan)
    assert counts["convert"] == N_PATIENTS and counts["gather_patients"] == 1, counts
    assert "synthesize_patient" not in counts and "synthetic_manifest" not in counts, counts
    assert all("Params have changed" in j.reason for j in plan if j.rule == "convert")
    # Restoring the source restores the fingerprint: nothing to do again.
    assert synthetic_ws.plan() == []


@pytest.mark.parametrize("relpath", STAGE_FILES)
def test_stage_code_edit_reruns_that_stage_and_downstream(synthetic_ws, relpath):
    """Editing a module reruns only rules that fingerprint it, for every patient, and
    what follows them; nothing else. (Which definition of a rule is active depends on
    the config, e.g. `stages.segment_frames: oracle|vbnet`, so a module of an inactive
    method may rerun nothing.)"""
    owners = candidates(relpath) & synthetic_ws.ran_rules
    if not owners:
        pytest.skip(f"no rule fingerprinting {relpath} ran for {TARGETS} in the default config")
    module = synthetic_ws.repo / "ctp_steps" / relpath
    original = module.read_bytes()
    try:
        module.write_bytes(original + b"\n# edited by test_reruns\n")
        plan = synthetic_ws.plan()
    finally:
        module.write_bytes(original)
    roots = {j.rule for j in plan if "Params have changed" in j.reason}
    assert roots <= owners, f"editing {relpath} changed the params of {sorted(roots - owners)}"
    if not roots:
        assert plan == [], [j.key for j in plan]
        return
    assert_stage_and_downstream(plan, synthetic_ws.forcerun(*sorted(roots), cache=True), roots)
    for rule in roots:
        patients = {j.patient for j in plan if j.rule == rule}
        assert patients == {None} or len(patients) == N_PATIENTS, (rule, patients)


@pytest.mark.parametrize(("section", "change", "stage"), CONFIG_CHANGES, ids=[c[0] for c in CONFIG_CHANGES])
def test_config_change_reruns_stage_and_downstream_only(synthetic_ws, section, change, stage):
    config = {**synthetic_ws.config, section: {**synthetic_ws.config.get(section, {}), **change}}
    expected = synthetic_ws.forcerun(stage)
    plan = synthetic_ws.plan(config=config)
    assert_stage_and_downstream(plan, expected, {stage})
    changed = {j.rule for j in plan if "Params have changed" in j.reason}
    assert stage in changed
    assert rules_of(plan)[stage] == N_PATIENTS or not any(j.patient for j in expected if j.rule == stage)


def test_new_synthetic_patient_runs_alone_plus_cohort_rules(synthetic_ws):
    """n_patients 3 → 4: the first three keep their specs, so only patient 4 runs."""
    config = tiny_config(synthetic_ws.work / "results", n_patients=N_PATIENTS + 1)
    plan = synthetic_ws.plan(config=config)
    done = {p.name for p in (synthetic_ws.work / "results" / "patients").glob("*/*")}
    new = {j.patient for j in plan if j.patient} - done
    assert len(new) == 1, rules_of(plan)
    assert all(j.patient in new for j in plan if j.patient), [j.key for j in plan if j.patient not in new]
    assert sum(1 for j in plan if j.patient) == per_patient_jobs_per_patient(synthetic_ws)
    cohort = rules_of([j for j in plan if not j.patient])
    assert all(n == 1 for n in cohort.values()) and "gather_patients" in cohort, cohort


def test_new_manifest_patient_runs_alone_plus_gather(manifest_ws):
    table = pd.read_csv(manifest_ws.work / "cohort.csv")
    first = table.iloc[0]
    new_dir = manifest_ws.work / "site" / "new" / "N0001"
    _fresh_copy(Path(first["dicom_dir"]), new_dir)
    grown = pd.concat([table, table.iloc[[0]].assign(patient_id="N0001", dicom_dir=str(new_dir))])
    grown_csv = manifest_ws.work / "cohort-grown.csv"
    grown.to_csv(grown_csv, index=False)
    plan = manifest_ws.plan(config={**manifest_ws.config, "manifest": str(grown_csv)})
    assert {j.patient for j in plan if j.patient} == {"N0001"}, rules_of(plan)
    assert sum(1 for j in plan if j.patient) == per_patient_jobs_per_patient(manifest_ws)
    cohort = rules_of([j for j in plan if not j.patient])
    assert cohort.get("gather_patients") == 1 and all(n == 1 for n in cohort.values()), cohort


def test_replaced_dicom_folder_reruns_that_patient_plus_gather(manifest_ws):
    table = pd.read_csv(manifest_ws.work / "cohort.csv")
    victim = table.iloc[1]
    folder = Path(victim["dicom_dir"])
    # convert is the stage that reads the DICOM folder; the victim's job and what follows:
    record = manifest_ws.work / "results" / "patients" / victim["center"] / victim["patient_id"] / "convert.status.json"
    assert record.exists(), record
    expected = manifest_ws.forcerun(str(record))
    # A site re-exports the patient: a new folder with fresh files replaces the old one.
    fresh = folder.with_name(folder.name + ".new")
    _fresh_copy(folder, fresh)
    shutil.rmtree(folder)
    fresh.rename(folder)
    plan = manifest_ws.plan()
    assert {j.patient for j in plan if j.patient} == {victim["patient_id"]}, rules_of(plan)
    assert_stage_and_downstream(plan, expected, {"convert"})
    assert "gather_patients" in rules_of(plan)


def weight_files() -> list[str]:
    models = REPO / "models"
    return sorted(
        p.relative_to(REPO).as_posix() for p in models.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES
    ) if models.is_dir() else []


@pytest.mark.parametrize("weights", weight_files() or [pytest.param(None, marks=pytest.mark.skip(
    reason="no model weights under models/ yet"))])
def test_replaced_weights_rerun_that_model_stage_and_downstream(synthetic_ws, weights):
    path = synthetic_ws.repo / weights
    original, stat = path.read_bytes(), path.stat()
    try:
        path.write_bytes(original + b"\0")  # new bytes and a new mtime: judged changed at any size
        plan = synthetic_ws.plan()
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    roots = {j.rule for j in plan if "updated by another job" not in j.reason and j.rule != "all"}
    if not plan:
        pytest.skip(f"{weights} is read by no rule of {TARGETS}")
    assert all(weights in j.reason or Path(weights).name in j.reason for j in plan if j.rule in roots), [
        (j.rule, j.reason) for j in plan if j.rule in roots]
    assert synthetic_ws.plan() == [], "restoring the weights must restore the up-to-date state"
    assert_stage_and_downstream(plan, synthetic_ws.forcerun(*sorted(roots)), roots)


def test_batched_run_equals_one_run(manifest_ws):
    """README's huge-cohort recipe: `--batch gather_patients=i/B` for i = 1..B builds the same
    cohort table as one run, and afterwards a plain run has nothing to do."""
    config = {**manifest_ws.config, "results_dir": str(manifest_ws.work / "results-batched")}
    n_batches = 2
    for i in range(1, n_batches + 1):
        manifest_ws.snakemake("all", "--batch", f"gather_patients={i}/{n_batches}", config=config)
    batched = pd.read_parquet(manifest_ws.work / "results-batched" / "cohort" / "patients.parquet")
    whole = pd.read_parquet(manifest_ws.work / "results" / "cohort" / "patients.parquet")
    key = ["center", "patient_id"]
    batched, whole = (t.sort_values(key).reset_index(drop=True) for t in (batched, whole))
    # config_hash covers results_dir, the only setting that differs
    pd.testing.assert_frame_equal(batched.drop(columns="config_hash"), whole.drop(columns="config_hash"))
    segments = [pd.read_parquet(manifest_ws.work / r / "cohort" / "segments.parquet") for r in ("results-batched", "results")]
    key = ["center", "patient_id", "segment"]
    batched, whole = (t.sort_values(key).reset_index(drop=True).drop(columns="config_hash") for t in segments)
    pd.testing.assert_frame_equal(batched, whole)
    assert manifest_ws.plan(config=config) == []
