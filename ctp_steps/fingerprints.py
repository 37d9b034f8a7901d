"""Code fingerprints of the rules, computed from what each command can import.

Snakemake does not track code inside an imported package, so each rule carries
a hash of the source it runs in `params`: editing that code reruns the rule
and everything after it, and nothing else. Hand-kept file lists drift (a module
added to a stage is forgotten, a shared helper is never listed), so the files
are found here by reading the source: the closure of the `ctp_steps` imports,
lazy imports inside functions included, starting from the handler of the
rule's `ctp-steps` subcommand, or for a per-patient stage from its contract
module (ctp_steps/stages.py) plus the generic `ctp-steps run`. Nothing is
imported: planning a large cohort must not load torch.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE = "ctp_steps"
PACKAGE_DIR = Path(__file__).resolve().parent


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def module_file(module: str) -> Path | None:
    """Source file of a `ctp_steps` module or package (None for anything outside the package)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base.with_suffix(".py") if parts[1:] and base.with_suffix(".py").is_file() else None


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR).with_suffix("")
    parts = [PACKAGE, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(nodes: list[ast.AST], current: str, is_package: bool) -> set[str]:
    """Modules named by the import statements anywhere inside `nodes` (`from m import x` adds m and m.x)."""
    found: set[str] = set()
    for node in (n for root in nodes for n in ast.walk(root)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = current.split(".") if is_package else current.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def _with_parents(module: str) -> list[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_closure(roots: list[tuple[str, list[ast.AST]]]) -> list[Path]:
    """Source files reachable from the import statements in `roots` ((module, nodes) pairs), sorted."""
    files: set[Path] = set()
    pending: list[str] = []
    for module, nodes in roots:
        path = module_file(module)
        if path is not None:
            files.add(path)  # only `nodes` of a root count, not the rest of its file
        pending += _with_parents(module)[:-1]
        pending += [m for name in _imported_modules(nodes, module, path is not None and path.name == "__init__.py")
                    for m in _with_parents(name)]
    while pending:
        path = module_file(pending.pop())
        if path is None or path in files:
            continue
        files.add(path)
        name = _module_name(path)
        imported = _imported_modules([_tree(path)], name, path.name == "__init__.py")
        pending += [m for i in imported for m in _with_parents(i)]
    return sorted(files)


def _command_handler(subcommand: str) -> tuple[str, ast.Module, ast.FunctionDef]:
    """Module and handler function of a `ctp-steps` subcommand, read from the `register()` of commands/*.py.

    A command module pairs `p = sub.add_parser("<name>", ...)` with the next `p.set_defaults(func=<handler>)`.
    """
    for path in sorted((PACKAGE_DIR / "commands").glob("*.py")):
        tree = _tree(path)
        pending_name = None
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            if node.func.attr == "add_parser" and node.args and isinstance(node.args[0], ast.Constant):
                pending_name = node.args[0].value
            elif node.func.attr == "set_defaults" and pending_name == subcommand:
                handler = next(k.value.id for k in node.keywords if k.arg == "func")
                functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
                return _module_name(path), tree, functions[handler]
    raise KeyError(f"no ctp-steps subcommand {subcommand!r} in {PACKAGE_DIR / 'commands'}")


def command_sources(subcommand: str) -> list[Path]:
    """Every package source the subcommand can run: module-level imports of its command module, the
    handler's own (lazy) imports and those of the module's functions it calls, and their closure."""
    module, tree, handler = _command_handler(subcommand)
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    reached, stack = {handler.name}, [handler]
    while stack:
        for node in ast.walk(stack.pop()):
            if isinstance(node, ast.Name) and node.id in functions and node.id not in reached:
                reached.add(node.id)
                stack.append(functions[node.id])
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    nodes = top_level + [functions[name] for name in sorted(reached)]
    return sorted({*import_closure([(module, nodes)]), PACKAGE_DIR / "cli.py"})


def stage_sources(stage: str, implementation: str | None = None) -> list[Path]:
    """Every package source `ctp-steps run <stage>` can run: the generic runner and the closure of the stage's
    contract module (the oracle's for `implementation="oracle"`), and nothing of the other stages."""
    from ctp_steps.stages import ORACLE, STAGES

    module = STAGES[stage].module_of(implementation or "")
    if implementation not in (None, ORACLE) and implementation not in STAGES[stage].implementations:
        raise KeyError(f"stage {stage}: no implementation {implementation!r}")
    path = module_file(module)
    if path is None:
        raise KeyError(f"stage {stage}: no module {module}")
    return sorted({*command_sources("run"), *import_closure([(module, [_tree(path)])])})


def _digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@cache
def code_fingerprint(subcommand: str) -> str:
    """Short hash of the sources `ctp-steps <subcommand>` can run (the rule's `params.code`)."""
    return _digest(command_sources(subcommand))


@cache
def stage_fingerprint(stage: str, implementation: str | None = None) -> str:
    """Short hash of the sources of one per-patient stage (its rule's `params.code`): editing mbf code
    reruns mbf and what follows, not the other stages."""
    return _digest(stage_sources(stage, implementation))
