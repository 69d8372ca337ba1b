"""The folders are the architecture, and their imports point one way: `ui` -> `profiling` -> `engine` -> `telemetry`,
with `engine.model` (the network) importing nothing else of ours. An import that runs back up the graph fails here,
naming the file, the line and the module it reached for; every import counts, including the ones inside functions
and under `TYPE_CHECKING`.

Run as a script, it prints the package graph (who imports whom), the picture the rules below keep.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("telemetry", "engine", "profiling", "ui")  # ours
ENGINE_INSIDE = {"engine.model", "engine.stages", "engine.runtime"}
ALLOWED = {  # rule package (the longest that holds a module governs it) -> what it may import of ours
    "telemetry": {"telemetry"},
    "engine.model": {"engine.model"},  # the network: pure functions of tensors, no serving logic
    "engine.stages": {"engine.stages", "engine.model", "engine", "telemetry"},
    "engine.runtime": {"engine.runtime", "engine.stages", "engine.model", "engine", "telemetry"},
    "engine": {"engine", *ENGINE_INSIDE, "telemetry"},  # the API: engine.py, request, config, prep, router
    "profiling": {"profiling", "engine", *ENGINE_INSIDE, "telemetry"},  # its benchmarks time the parts alone
    "ui": {"ui", "profiling", "engine", "telemetry"},  # the engine's public modules only
}


def governing(module: str) -> str | None:
    """The rule that applies to a module: the longest `ALLOWED` key that is the module or a package above it."""
    keys = [k for k in ALLOWED if module == k or module.startswith(k + ".")]
    return max(keys, key=len) if keys else None


def imports_of(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """(line, module) for every import of ours in a file, relative imports resolved against `package` (default:
    where the file sits in the tree)."""
    package = package or ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in [*parent, base] if p)
            names = [f"{base}.{alias.name}" for alias in node.names] if base in PACKAGES else [base]
        else:
            continue
        out += [(node.lineno, name) for name in names if name.split(".")[0] in PACKAGES]
    return out


def modules() -> dict[str, Path]:
    found = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            found[".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def violations() -> list[str]:
    out = []
    for module, path in modules().items():
        rule = governing(module)
        for line, target in imports_of(path):
            allowed = ALLOWED[rule] if rule else set()
            if governing(target) not in allowed:
                out.append(f"{path.relative_to(ROOT)}:{line}: {module} ({rule}) imports {target}")
    return out


def package_graph() -> dict[str, set[str]]:
    """Rule package -> the rule packages it imports (itself left out)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules().items():
        source = governing(module) or module
        for _, target in imports_of(path):
            dest = governing(target) or target
            if dest != source:
                graph[source].add(dest)
    return graph


def test_imports_point_one_way() -> None:
    assert violations() == []


def test_the_rules_catch_an_upward_import(tmp_path) -> None:
    """The checker itself: an engine module importing the profiler, or the network importing the engine, is caught."""
    bad = "import torch\nfrom profiling.run import profile_run\nfrom engine.request import Task\n"
    (tmp_path / "bad.py").write_text(bad)
    found = [target for _, target in imports_of(tmp_path / "bad.py", package="engine.model")]
    assert found == ["profiling.run", "engine.request"]
    assert [governing(t) in ALLOWED["engine.model"] for t in found] == [False, False]
    assert governing("engine.request") in ALLOWED["profiling"]


if __name__ == "__main__":
    for source, targets in sorted(package_graph().items()):
        print(f"{source:14} -> {', '.join(sorted(targets))}")
    problems = violations()
    print("\n".join(problems) or "no import runs against the rules")
    sys.exit(1 if problems else 0)
