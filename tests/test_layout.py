"""The package's shape (issue: one orchestrator, an io/ package): no import cycle between
opdgeo's modules, at import time or through lazy imports inside functions (only
``TYPE_CHECKING`` blocks, which never run, are left out), small modules, and a CLI of
commands only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "opdgeo"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.stmt, found: set[str]) -> None:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Import):
            found |= {a.name for a in sub.names if a.name.startswith("opdgeo")}
        elif isinstance(sub, ast.ImportFrom) and (sub.module or "").startswith("opdgeo"):
            mod = str(sub.module)
            for alias in sub.names:  # ``from opdgeo import x`` may name a submodule
                candidate = f"{mod}.{alias.name}"
                path_mod = PACKAGE.parent / candidate.replace(".", "/")
                sub_exists = path_mod.with_suffix(".py").exists() or path_mod.is_dir()
                found.add(candidate if sub_exists else mod)


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def top_level_imports(path: Path) -> set[str]:
    """opdgeo modules imported when ``path`` is imported (module level, not TYPE_CHECKING,
    not inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            _imported(node, found)
    return found


def runtime_imports(path: Path) -> set[str]:
    """opdgeo modules ``path`` imports at run time: at module level and lazily inside
    functions (a lazy import cycle is still a cycle); only ``if TYPE_CHECKING:`` blocks,
    which never run, are left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                _imported(child, found)
            visit(child)

    visit(tree)
    return found


def graph(lazy: bool = True) -> dict[str, set[str]]:
    """Module -> the opdgeo modules it imports (``lazy``: function-level imports too)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    imports = runtime_imports if lazy else top_level_imports
    edges = {name: {m for m in imports(p) if m in modules and m != name}
             for name, p in modules.items()}  # fmt: skip
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``edges`` (depth-first), or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    """Neither at import time nor through lazy imports inside functions (the issue's
    ``sources`` -> ``hub`` -> ``sources`` was a lazy one)."""
    for lazy in (False, True):
        cycle = find_cycle(graph(lazy))
        assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_sees_lazy_imports(tmp_path: Path) -> None:
    code = "def f() -> None:\n    from opdgeo import engine\n"
    (tmp_path / "m.py").write_text(code + "if TYPE_CHECKING:\n    from opdgeo import api\n")
    assert runtime_imports(tmp_path / "m.py") == {"opdgeo.engine"}
    assert top_level_imports(tmp_path / "m.py") == set()
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_io_locations_do_not_import_each_other() -> None:
    edges = graph()
    sources = {"opdgeo.io.local", "opdgeo.io.hub", "opdgeo.io.pickle"}
    for name in sources:
        assert not (edges[name] & (sources - {name, "opdgeo.io.pickle"})), name
    assert "opdgeo.engine" not in edges["opdgeo.aggregate"]
    model = {"opdgeo.errors", "opdgeo.io", "opdgeo.io.dtypes", "opdgeo.io.decoded"}
    assert not edges["opdgeo.io.checkpoint"] - model
    assert not edges["opdgeo.io.dtypes"]  # the dtype tables are a leaf
    assert not edges["opdgeo.io.decoded"]  # so is what a decoder attaches to its tensors


def test_no_module_is_over_400_lines() -> None:
    big = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}  # fmt: skip
    assert not big, big


def test_cli_holds_commands_only() -> None:
    tree = ast.parse((PACKAGE / "cli.py").read_text(encoding="utf-8"))
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    helpers = {"user_errors", "_version", "_root", "_start", "main"}
    for fn in functions:
        decorated = any("app." in ast.unparse(d) for d in fn.decorator_list)
        assert decorated or fn.name in helpers, f"cli.{fn.name} is not a command"
    assert not [n for n in tree.body if isinstance(n, ast.ClassDef)], "classes belong elsewhere"


def test_every_user_facing_error_lives_in_errors_py() -> None:
    """All errors and exit codes in one module (the issue: Hub errors and exit codes 4 and 5
    were defined in hub.py): no class elsewhere derives from an opdgeo error or warning."""
    errors = ast.parse((PACKAGE / "errors.py").read_text(encoding="utf-8"))
    names = {n.name for n in errors.body if isinstance(n, ast.ClassDef)}
    assert {"OpdgeoError", "OpdgeoWarning", "HubAccessError", "OfflineMissError"} <= names
    elsewhere = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            bases = {ast.unparse(b).rpartition(".")[2] for b in getattr(node, "bases", [])}
            if isinstance(node, ast.ClassDef) and bases & names:
                elsewhere.append(f"{path.relative_to(PACKAGE)}: {node.name}")
            if (isinstance(node, ast.Assign) and "EXIT_" in ast.unparse(node.targets[0])
                    and isinstance(node.value, ast.Constant)):  # fmt: skip
                elsewhere.append(f"{path.relative_to(PACKAGE)}: {ast.unparse(node.targets[0])}")
    assert not elsewhere, elsewhere
