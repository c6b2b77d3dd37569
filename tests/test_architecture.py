"""The dependency rule, read from the source: the library (``skipstep``) never imports the lab (``skipstep.lab``),
no modules import each other in a loop, no module reaches for another module's private names, modules stay
small, and the README's imports work.

Every import counts, also one inside a function (a local import that dodges a cycle at import time is still a
cycle in the design).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import skipstep
from skipstep import storage

SRC = Path(skipstep.__file__).resolve().parent
ROOT = SRC.parent
README = ROOT.parent / "README.md"
#: The command-line entry point belongs to the harness: it is the ``skipstep`` command.
HARNESS_PREFIXES = ("skipstep.lab", "skipstep.__main__")
MAX_MODULE_LINES = 600


def module_files() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_edges() -> dict[str, dict[str, list[tuple[int, str]]]]:
    """``{module: {imported skipstep module: [(line, imported name), ...]}}`` for every import statement."""
    files = module_files()
    edges: dict[str, dict[str, list[tuple[int, str]]]] = {m: {} for m in files}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[tuple[str, str]] = []
            if isinstance(node, ast.Import):
                targets = [(alias.name, "") for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append((sub, "") if sub in files else (base, alias.name))
            for target, name in targets:
                if target.split(".")[0] != "skipstep" or target == module:
                    continue
                while target not in files and "." in target:
                    target = target.rsplit(".", 1)[0]
                edges[module].setdefault(target, []).append((node.lineno, name))
    return edges


def strongly_connected(edges: dict[str, dict]) -> list[list[str]]:
    """Tarjan's algorithm: the import cycles (components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return cycles


def is_harness(module: str) -> bool:
    return module.startswith(HARNESS_PREFIXES)


def test_the_graph_is_read():
    """The parser sees the package (guards the checks below against passing on an empty graph)."""
    edges = import_edges()
    assert {"skipstep.steps", "skipstep.lab.bench", "skipstep.lab.testbeds.gmm"} <= set(edges)
    assert "skipstep.plan" in edges["skipstep.steps"]
    assert "skipstep.paths" in edges["skipstep.lab.testbeds.gmm"]  # a three-dot relative import


def test_no_import_cycles():
    cycles = strongly_connected(import_edges())
    assert cycles == [], f"modules that import each other in a loop: {cycles}"


def test_cycle_detection_finds_a_loop():
    assert strongly_connected({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}, "d": {"a": []}}) == [["a", "b", "c"]]


def test_the_library_never_imports_the_lab():
    bad = [f"{m} -> {t} (line {sites[0][0]})" for m, targets in import_edges().items() if not is_harness(m)
           for t, sites in targets.items() if is_harness(t)]
    assert bad == [], "library modules importing the harness: " + "; ".join(bad)


def test_no_private_names_across_modules():
    bad = [f"{m} imports {name} from {t} (line {line})" for m, targets in import_edges().items()
           for t, sites in targets.items() for line, name in sites
           if name.startswith("_") and not name.startswith("__")]
    assert bad == [], "; ".join(bad)


def test_modules_stay_small():
    big = {m: n for m, p in module_files().items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert big == {}, f"modules over {MAX_MODULE_LINES} lines: {big}"


def _readme_import_lines() -> list[str]:
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if re.match(r"\s*(from skipstep[\w.]* import|import skipstep)", line)]


def test_readme_imports_work():
    lines = _readme_import_lines()
    assert any("SkippedStepScheduler" in line for line in lines)
    for line in lines:
        exec(compile(line, "README.md", "exec"), {})


@pytest.mark.parametrize("name", ["SkippedStepScheduler", "SkippedStepFlowScheduler", "sample", "DiscreteVPPath",
                                  "RectifiedFlowPath", "ContinuousVPPath", "gaussian_posterior", "load_schedule",
                                  "TunedSchedule", "DEFAULT_ETA", "DEFAULT_SOLVER_ORDER"])
def test_public_names(name):
    assert name in skipstep.__all__ and getattr(skipstep, name) is not None


def test_the_suite_caches_in_a_temporary_directory():
    """conftest.py points SKIPSTEP_CACHE_DIR at a temporary directory: the suite never writes to the home cache,
    and the one cache function honours it."""
    cache = storage.cache_dir()
    assert cache.name.startswith("skipstep-test-cache-")
    assert Path.home() not in cache.parents
