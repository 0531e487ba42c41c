"""Layers run one way, CLI -> flows -> library, and importing anything has no side effects.

Every module of ``supsup_fin`` is read as source (its AST, imports inside functions included):

* only ``supsup_fin/cli/`` may import ``pipelines`` or Prefect (``prefect``, ``prefect_*``);
* only ``supsup_fin/tracking/`` may import ``mlflow``;
* the modules' import-time imports form no cycle.

Then every module of ``supsup_fin`` and ``pipelines`` is imported in a subprocess that checks
``os.environ`` after each import: importing must not write it. (Third-party packages may: scikit-learn
sets ``KMP_*`` variables when imported, so they are imported before the check starts.)
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(package: str) -> dict[str, Path]:
    """Module name -> source file, for every module of ``package`` (``__main__`` left out: it runs)."""
    return {_module_name(p): p for p in sorted((ROOT / package).rglob("*.py")) if p.name != "__main__.py"}


LIBRARY = _modules("supsup_fin")
FLOWS = _modules("pipelines")
KNOWN = {**LIBRARY, **FLOWS}


@dataclass(frozen=True)
class Import:
    """One imported module, as written in ``module`` at ``line``."""

    module: str
    target: str
    line: int
    at_import: bool  # runs when ``module`` is imported: not inside a function or an ``if TYPE_CHECKING:``

    @property
    def top(self) -> str:
        return self.target.split(".")[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base


def imports_of(module: str, path: Path) -> list[Import]:
    """Every import statement of a module, each name resolved to the module it loads.

    ``from pkg import name`` loads ``pkg.name`` when that is one of our modules, else ``pkg``.
    """
    found: list[Import] = []

    def visit(node: ast.AST, at_import: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(module, a.name, node.lineno, at_import) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path, node)
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append(Import(module, sub if sub in KNOWN else base, node.lineno, at_import))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            at_import = False
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, at_import)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, at_import)

    visit(ast.parse(path.read_text(), filename=str(path)), True)
    return found


ALL_IMPORTS = [imp for name, path in LIBRARY.items() for imp in imports_of(name, path)]


def _where(imp: Import) -> str:
    return f"{LIBRARY[imp.module].relative_to(ROOT)}:{imp.line} imports {imp.target}"


def test_the_walk_sees_every_kind_of_import() -> None:
    """The walker itself: function-level and TYPE_CHECKING imports are found, relative ones resolved."""
    assert len(LIBRARY) > 50 and "supsup_fin.cli" in LIBRARY and "supsup_fin.tracking.runs" in LIBRARY
    by_module = {(i.module, i.target): i for i in ALL_IMPORTS}
    # cli/__init__.py imports the retrain flow inside a function only
    assert not by_module[("supsup_fin.cli", "pipelines.retrain")].at_import
    # cli/__init__.py imports its command modules at module level (registration on the app)
    assert by_module[("supsup_fin.cli", "supsup_fin.cli.deploy")].at_import


def test_only_the_cli_imports_flows_or_prefect() -> None:
    bad = [_where(i) for i in ALL_IMPORTS if not i.module.startswith("supsup_fin.cli")
           and (i.top == "pipelines" or i.top == "prefect" or i.top.startswith("prefect_"))]
    assert not bad, "the library must not import pipelines/ or Prefect:\n" + "\n".join(bad)


def test_only_tracking_imports_mlflow() -> None:
    bad = [_where(i) for i in ALL_IMPORTS if i.top == "mlflow" and not i.module.startswith("supsup_fin.tracking")]
    assert not bad, "only supsup_fin/tracking/ may import mlflow:\n" + "\n".join(bad)


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``supsup_fin`` modules it imports while it is being imported.

    Only explicit imports count: ``import supsup_fin.a.b`` is an edge to ``supsup_fin.a.b``, not to
    the package ``supsup_fin.a`` Python runs first (a package ``__init__`` that re-exports names
    from its submodules is not a cycle). A package may import its own submodules from its
    ``__init__`` to have them register themselves (``supsup_fin/cli/__init__.py`` imports
    ``cli.data``, ``cli.deploy``, ``cli.backtest``, whose commands land on the shared ``app``):
    that is one edge, package -> submodule, and stays acyclic because the command modules take
    ``app`` from ``cli.common``, never from the package.
    """
    graph: dict[str, set[str]] = {name: set() for name in LIBRARY}
    for imp in ALL_IMPORTS:
        if imp.at_import and imp.target in LIBRARY and imp.target != imp.module:
            graph[imp.module].add(imp.target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle ``[a, b, ..., a]`` of ``graph`` (depth-first search, three colours), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := dfs(start)):
            return cycle
    return None


def test_find_cycle_finds_one_and_only_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_no_circular_imports() -> None:
    graph = import_graph()
    assert graph["supsup_fin.cli"] >= {"supsup_fin.cli.common", "supsup_fin.cli.deploy"}  # the graph is not empty
    cycle = find_cycle(graph)
    assert cycle is None, "circular import: " + " -> ".join(cycle)


# ---------------------------------------------------------------- no side effects on import

_CHECK_ENV = """
import importlib, json, os, sys
for name in json.loads(sys.argv[2]):  # third-party modules first: what they write is not ours
    importlib.import_module(name)
for name in json.loads(sys.argv[1]):
    before = dict(os.environ)
    importlib.import_module(name)
    if dict(os.environ) != before:
        after = dict(os.environ)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        print(json.dumps({"module": name, "changed": {k: [before.get(k), after.get(k)] for k in changed}}))
        sys.exit(1)
print(json.dumps({"imported": len(json.loads(sys.argv[1]))}))
"""


def _import_checking_environ(modules: list[str], pythonpath: str,
                             third_party: list[str] = ()) -> subprocess.CompletedProcess:
    # Settings a module might set with setdefault are removed first, so such a write shows.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SUPSUP_"))}
    env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-c", _CHECK_ENV, json.dumps(modules), json.dumps(list(third_party))],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_environ_check_catches_a_write(tmp_path: Path) -> None:
    (tmp_path / "noisy_module.py").write_text("import os\nos.environ.setdefault('PREFECT_SOMETHING', '1')\n")
    proc = _import_checking_environ(["json", "noisy_module"], str(tmp_path))
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout) == {"module": "noisy_module", "changed": {"PREFECT_SOMETHING": [None, "1"]}}


@pytest.mark.parametrize("package", ["supsup_fin", "pipelines"])
def test_importing_a_module_leaves_the_environment_alone(package: str) -> None:
    modules = sorted(LIBRARY if package == "supsup_fin" else FLOWS)
    third_party = sorted({i.target for name, path in KNOWN.items() for i in imports_of(name, path)
                          if i.at_import and i.top not in ("supsup_fin", "pipelines", "__future__")})
    proc = _import_checking_environ(modules, str(ROOT), third_party)
    assert proc.returncode == 0, f"importing wrote os.environ: {proc.stdout.strip()}\n{proc.stderr[-3000:]}"
    assert json.loads(proc.stdout) == {"imported": len(modules)}


def test_the_cli_imports_neither_prefect_nor_mlflow_until_a_command_needs_them() -> None:
    """A command that starts a flow sets Prefect's defaults before Prefect is imported, which only
    works if importing the CLI has not imported it already (it also keeps ``--help`` fast)."""
    code = "import sys, supsup_fin.cli; print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'mlflow'}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
