"""The house rules of docs/ARCHITECTURE.md, checked on the source: imports only run downwards (or sideways within a
package), no module imports another module's private names, and no module grows past the size limit."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import persona_axes as pa

PACKAGE = Path(pa.__file__).resolve().parent

#: Bottom to top. A module may import from its own level or any level below, never above.
LEVELS = ["errors", "core", "stats", "progress", "files", "model", "activations", "vectors", "export", "steering", "judges", "engines",
          "runs", "evals", "viz", "cli", "__main__", "__init__"]
MAX_LINES = 420


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(["persona_axes", *parts])] = path
    return out


def _level(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    assert top in LEVELS, f"{module}: package {top!r} has no level in LEVELS; add it where it belongs"
    return LEVELS.index(top)


def _imports(path: Path, module: str) -> list[tuple[str, list[str], int]]:
    """``(imported module, names, line)`` for every import of persona_axes in the file (absolute or relative)."""
    tree = ast.parse(path.read_text())
    pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "persona_axes":
                out.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "persona_axes":
                    out.append((a.name, [], node.lineno))
    return out


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_downwards(module):
    if module == "persona_axes":
        return
    me = _level(module)
    bad = []
    for target, _names, line in _imports(MODULES[module], module):
        if target == "persona_axes":
            bad.append(f"line {line}: imports the package root (take the name from the module that defines it)")
        elif _level(target) > me:
            bad.append(f"line {line}: imports {target} (level {LEVELS[_level(target)]}) from level {LEVELS[me]}")
    assert not bad, f"{module} imports upwards:\n" + "\n".join(bad)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_of_other_modules(module):
    bad = []
    for target, names, line in _imports(MODULES[module], module):
        if target == module:
            continue
        for n in names:
            if n.startswith("_") and not n.startswith("__"):
                bad.append(f"line {line}: {n} from {target}")
    assert not bad, f"{module} imports private names:\n" + "\n".join(bad)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    n = len(MODULES[module].read_text().splitlines())
    assert n <= MAX_LINES, f"{module} has {n} lines (limit {MAX_LINES}): split it by concept"


def test_no_import_cycles_between_modules():
    """Module-level imports (function-level ones are deferred, and allowed only downwards by the test above)."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        deps = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("persona_axes") \
                    and not node.level:
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    deps.add(sub if sub in MODULES else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("persona_axes."))
        graph[module] = {d for d in deps if d in MODULES and d != module}
    # a package __init__ that re-exports its own modules is not a cycle with them
    for module in graph:
        graph[module] = {d for d in graph[module] if not (MODULES[d].name == "__init__.py" and module.startswith(d + "."))}
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            visit(d)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
