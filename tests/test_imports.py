"""No stage imports a sibling stage, and no stage imports validation (issue 16).

Every module of each stage package is parsed with `ast` (nothing is imported, so
torch never loads); every import statement counts, lazy imports inside
functions included. A stage module may import:
- its own stage package (`conversion` and `convert` are one stage);
- the shared modules in SHARED (types, io, aha, bullseye, figures, ...);
- third-party packages.
It may never import another stage package or `ctp_steps.validation` (validation
may import stages, never the reverse), and a stage's modules import each other
without cycles. The exceptions are few and listed in
ALLOWED with their reason:
- training code (`*/train.py`, `*/data.py`, which make training sets from
  phantom patients) may import `phantom`, as may the training section of
  `segmentation/config.py` (its `training.phantom` settings are PhantomParams);
- `oracle`, the validation-only stand-in built from the phantom's truth, may
  import `phantom` (its motion and the inverse `undo_motion`).
"""

from __future__ import annotations

import ast
from fnmatch import fnmatch
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "ctp_steps"

# stage → its modules/packages under ctp_steps (a name: name.py or the package name/)
STAGES = {
    "conversion": ("conversion", "convert"),
    "segmentation": ("segmentation",),
    "registration": ("registration",),
    "landmarks": ("landmarks",),
    "mbf": ("mbf",),
    "imv": ("imv",),
    "oracle": ("oracle",),
    "phantom": ("phantom",),
}

# what any stage may import from ctp_steps besides its own package
SHARED = {
    "ctp_steps",  # the package itself (__version__)
    "ctp_steps.types",
    "ctp_steps.io",
    "ctp_steps.aha",
    "ctp_steps.bullseye",
    "ctp_steps.figures",
    "ctp_steps.config",
    "ctp_steps.layout",
    "ctp_steps.stages",
    "ctp_steps.devices",
    "ctp_steps.models",
    "ctp_steps.reasons",
    "ctp_steps.orientation",
    "ctp_steps.resources",
    "ctp_steps.tensors",
}

FORBIDDEN_ALWAYS = ("validation",)

# (module file glob relative to ctp_steps/, stage it may import in addition): the documented exceptions
ALLOWED = [
    ("*/train.py", "phantom"),  # training sets come from phantom patients
    ("*/data.py", "phantom"),
    ("segmentation/config.py", "phantom"),  # training.phantom: PhantomParams of the training patients
    ("oracle/*.py", "phantom"),  # the validation-only stand-in is built from the phantom's truth
]


def _stage_of_top(top: str) -> str | None:
    return next((stage for stage, names in STAGES.items() if top in names), None)


def stage_files() -> list[tuple[str, Path]]:
    out = []
    for stage, names in STAGES.items():
        for name in names:
            package, module = PACKAGE_DIR / name, PACKAGE_DIR / f"{name}.py"
            if package.is_dir():
                out += [(stage, p) for p in sorted(package.rglob("*.py"))]
            if module.is_file():
                out.append((stage, module))
    return out


def _module_name(path: Path, package_dir: Path) -> str:
    parts = ["ctp_steps", *path.relative_to(package_dir).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, package_dir: Path = PACKAGE_DIR) -> list[tuple[int, str]]:
    """(line, module) of every import statement of the file, lazy ones included; relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    current = _module_name(path, package_dir)
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = current.split(".") if is_package else current.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.append((node.lineno, base))
            # `from ctp_steps import validation` names a module too
            if base == "ctp_steps":
                found += [(node.lineno, f"ctp_steps.{alias.name}") for alias in node.names]
    return found


def violations(stage: str, path: Path, package_dir: Path = PACKAGE_DIR) -> list[str]:
    rel = path.relative_to(package_dir).as_posix()
    allowed_stages = {other for pattern, other in ALLOWED if fnmatch(rel, pattern)}
    bad = []
    for line, module in imported_modules(path, package_dir):
        parts = module.split(".")
        if parts[0] != "ctp_steps" or len(parts) == 1:
            continue
        top = parts[1]
        if top in FORBIDDEN_ALWAYS:
            bad.append(f"{rel}:{line} imports {module} (stages never import validation)")
            continue
        other = _stage_of_top(top)
        if other == stage:
            continue
        if other is not None:
            if other not in allowed_stages:
                bad.append(f"{rel}:{line} imports {module} (stage {stage} → sibling stage {other})")
        elif f"ctp_steps.{top}" not in SHARED:
            bad.append(f"{rel}:{line} imports {module} (not a shared module: add it to SHARED or move it)")
    return bad


def test_every_stage_has_modules():
    files = stage_files()
    assert {stage for stage, _ in files} == set(STAGES)
    assert len(files) > 40


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_no_stage_imports_a_sibling_stage_or_validation(stage):
    bad = [v for s, path in stage_files() if s == stage for v in violations(s, path)]
    assert not bad, "\n".join(bad)


def test_no_import_cycle_between_stage_modules():
    """A stage's modules import each other one way only (mbf/plots.py ↔ mbf/stage.py was a cycle)."""
    modules = {_module_name(path, PACKAGE_DIR): path for _, path in stage_files()}
    edges = {m: {i for _, i in imported_modules(p) if i in modules and i != m} for m, p in modules.items()}
    state: dict[str, str] = {}
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for other in sorted(edges[module]):
            if state.get(other) == "open":
                cycles.append(" → ".join(stack[stack.index(other):] + [other]))
            elif other not in state:
                visit(other, stack + [other])
        state[module] = "done"

    for module in sorted(modules):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_walk_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself: a lazy sibling import inside a function and a validation import are caught."""
    pkg = tmp_path / "ctp_steps"
    (pkg / "mbf").mkdir(parents=True)
    (pkg / "mbf" / "__init__.py").write_text("")
    module = pkg / "mbf" / "plots.py"
    module.write_text(
        "from . import fit\n"
        "def f():\n"
        "    from ctp_steps.landmarks.bullseye import draw_bullseye\n"
        "    import ctp_steps.validation.mbf\n"
        "    from ctp_steps import validation\n"
        "    from ctp_steps.bullseye import draw_bullseye\n"
    )
    found = violations("mbf", module, pkg)
    assert len(found) == 3, found
    assert any("sibling stage landmarks" in v for v in found)
    assert sum("never import validation" in v for v in found) == 2


def test_validation_package_replaces_the_old_modules():
    for gone in ("validate.py", "mbf_validation.py", "registration/validation.py",
                 "segmentation/validation.py", "landmarks/validation.py", "landmarks/bullseye.py"):
        assert not (PACKAGE_DIR / gone).exists(), gone
    names = {p.stem for p in (PACKAGE_DIR / "validation").glob("*.py")}
    assert {"rows", "truth", "conversion", "segmentation", "registration", "landmarks", "mbf", "imv",
            "summary"} <= names
