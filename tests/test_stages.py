"""The stage contract: every per-patient rule's input/output keys are its stage's Inputs/Outputs fields.

The workflow is parsed by Snakemake itself (its API, in a subprocess per configuration, since a
workflow holds process-wide state), for each implementation a config can choose, so the oracle
rules and the conditional MBF output are checked too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields

import pytest

from conftest import REPO
from ctp_steps.stages import CHAIN, ORACLE, STAGES, load_contract, upstream_status

RULE_KEYS = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

with SnakemakeApi(OutputSettings(quiet=None)) as api:
    wf = api.workflow(ResourceSettings(), ConfigSettings(config=json.loads(sys.argv[2])),
                      snakefile=Path(sys.argv[1]), workdir=Path(sys.argv[3]))._workflow
    ns = wf.globals
    print(json.dumps({
        "chain": [[s.name, impl] for s, impl in ns["ACTIVE_CHAIN"]],
        "rules": {r.name: {"input": list(r.input.keys()), "output": list(r.output.keys())} for r in wf.rules},
    }))
"""

CONFIGS = {
    "default": {},
    "oracle": {"stages": {"segment_frames": "oracle", "registration": "oracle", "segment_myocardium": "oracle",
                          "landmarks": "oracle"}},
    "fermi_simpleitk": {"mbf": {"method": "fermi"}, "stages": {"registration": "simpleitk"}},
    "upslope_none": {"mbf": {"method": "upslope"}, "stages": {"registration": "none"}},
}


def parsed_workflow(overrides: dict, tmp_path) -> dict:
    config = {"synthetic": {"n_patients": 2}, "results_dir": str(tmp_path / "results"), **overrides}
    proc = subprocess.run([sys.executable, "-c", RULE_KEYS, str(REPO / "Snakefile"), json.dumps(config), str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_rule_keys_are_the_stage_contract_fields(name, tmp_path):
    parsed = parsed_workflow(CONFIGS[name], tmp_path)
    assert [s for s, _ in parsed["chain"]] == [s.name for s in CHAIN]
    for stage, implementation in parsed["chain"]:
        contract = load_contract(stage, implementation)
        rule = parsed["rules"][stage]
        inputs = {f.name for f in fields(contract.Inputs)} - ({"upstream"} if stage == CHAIN[0].name else set())
        optional_out = {f.name for f in fields(contract.Outputs) if f.default is None}
        assert set(rule["input"]) == inputs, (name, stage)
        assert set(rule["output"]) - optional_out == {f.name for f in fields(contract.Outputs)} - optional_out
        assert set(rule["output"]) <= {f.name for f in fields(contract.Outputs)}, (name, stage)
    if name != "oracle":
        assert ("blood_volume" in parsed["rules"]["mbf"]["output"]) == (name == "default")


def test_the_chain_names_each_stage_once_and_its_predecessor():
    names = [s.name for s in CHAIN]
    assert len(set(names)) == len(names) and names[0] == "convert"
    assert [upstream_status(n) for n in names[1:]] == [f"{n}.status.json" for n in names[:-1]]
    for stage in CHAIN:
        for implementation in stage.implementations:
            contract = load_contract(stage.name, implementation)
            assert callable(contract.run) and hasattr(contract, "Config"), (stage.name, implementation)
    assert STAGES["register"].implementations == ("learned", "simpleitk", "none", ORACLE)


def test_stage_processes_keep_freed_memory_on_glibc():
    """`ctp-steps` asks glibc to keep freed blocks below 32 MiB mapped (fewer page faults per reuse); the
    setting is visible to the process: a 16 MiB block freed and taken again comes back at the same address
    (by default the first one is mmap'd and unmapped on free, and the second comes from the heap)."""
    import platform

    from ctp_steps.cli import keep_freed_memory_for_reuse

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    code = (
        "import ctypes, sys; from ctp_steps.cli import keep_freed_memory_for_reuse as k; ok = k();"
        "libc = ctypes.CDLL('libc.so.6'); libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p];"
        "a = libc.malloc(16 << 20); libc.free(a); b = libc.malloc(16 << 20); print(ok, a == b)"
    )
    assert keep_freed_memory_for_reuse() is True
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True"], out
