"""No import cycles inside any package, `if TYPE_CHECKING:` and function-level imports included: a cycle there
is still two modules that cannot be understood (or split) one without the other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.servers import repo_root

PACKAGES = ("libs/common/src/longrun_common", "libs/client/src/longrun_client", "services/gateway/src/longrun_gateway",
            "services/progress-hub/src/longrun_hub", "services/worker/src/longrun_worker")


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package at `root`."""
    names = {}
    for path in root.rglob("*.py"):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package's own modules that `name` imports, anywhere in the file."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]  # (`from . import x`)
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` imports a.b.c, whichever is a module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def cycles(root: Path) -> list[list[str]]:
    """Each import cycle among the package's modules (one per back edge of a depth-first walk)."""
    files = module_names(root)
    graph = {name: imports_of(name, path, set(files)) for name, path in files.items()}
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                found.append([*path[path.index(dep):], dep])
            elif dep not in state:
                visit(dep)
        path.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles_within_a_package(package: str) -> None:
    root = repo_root() / package
    assert module_names(root), f"no modules under {package}"
    assert cycles(root) == []


def test_the_check_finds_a_cycle_through_type_checking_and_relative_imports(tmp_path: Path) -> None:
    """The check itself: the shapes the three removed cycles had."""
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n")
    (root / "b.py").write_text("from .sub import c\n")
    (root / "sub" / "c.py").write_text("def f():\n    from ..a import A\n")
    (root / "d.py").write_text("import pkg.a\n")
    assert cycles(root) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]
