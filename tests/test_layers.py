"""The house stays layered (README, "Layout"): every import of a geosurge module points down a floor or stays on
its own, `config.py` imports nothing of geosurge, the library floor imports neither MLflow nor Ray Train, there
is no import cycle, and no module grows past about 500 lines. Read from the source (function-level imports too)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "geosurge"
MAX_LINES = 500

# floor of each room, by the first path parts under geosurge/ (the longest match wins)
FLOORS = {
    ("config_parsing",): 0, ("redaction",): 0, ("config",): 0, ("storage",): 1, ("retry",): 1, ("uri_access",): 1, ("layout",): 1, ("runtime",): 1, ("device",): 1,
    ("errors",): 1, ("console",): 1,
    ("geo",): 2, ("segmentation",): 2, ("data",): 2, ("models",): 2, ("serving",): 2,
    ("train",): 3, ("tracking",): 3, ("eval",): 3,
    ("orchestration",): 4,
    ("cli",): 5, ("__init__",): 5,
}
LIBRARY_FLOOR = 2
GROUND_FLOOR = {"geosurge.config", "geosurge.config_parsing", "geosurge.redaction"}
LIBRARY_MUST_NOT_IMPORT = ("mlflow", "ray.train", "deepspeed")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _floor(module: str) -> int:
    parts = tuple(module.split(".")[1:]) or ("__init__",)
    for n in range(len(parts), 0, -1):
        if parts[:n] in FLOORS:
            return FLOORS[parts[:n]]
    raise AssertionError(f"{module} is in no room of the layout: add it to FLOORS and the README")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from geosurge import storage`
    return names


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _geosurge_imports(module: str) -> set[str]:
    out = set()
    for name in _imports(MODULES[module]):
        while name and name not in MODULES:  # `geosurge.storage.S3Config` → `geosurge.storage`
            name = name.rpartition(".")[0]
        if name and name != module and name != "geosurge":
            out.add(name)
    return out


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    floor = _floor(module)
    for target in _geosurge_imports(module):
        assert _floor(target) <= floor, f"{module} (floor {floor}) imports {target} (floor {_floor(target)})"
    if module in GROUND_FLOOR:  # config rests on nothing but these two small rooms
        assert _geosurge_imports(module) <= GROUND_FLOOR - {"geosurge.config"}
    if floor <= LIBRARY_FLOOR:
        bad = sorted(n for n in _imports(MODULES[module]) if n.startswith(LIBRARY_MUST_NOT_IMPORT))
        assert not bad, f"library module {module} imports {bad}"


def test_no_import_cycles():
    graph = {m: _geosurge_imports(m) for m in MODULES}
    # a package's __init__ re-exports its own submodules: an edge into the package from inside it is no cycle
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " → ".join(path[path.index(t):] + [t]) if t in path else t)
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_about_500_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines: it holds two rooms"
