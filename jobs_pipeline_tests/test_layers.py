"""The package's import graph: no cycle, and Dagster's private modules reached from one
module only. `make lint`'s import-linter contract (pyproject.toml) keeps the layers'
order; this keeps what it does not see: cycles inside a layer, even through an import
made inside a function.
"""

import re
from pathlib import Path

import grimp

import jobs_pipeline

PACKAGE = Path(jobs_pipeline.__file__).parent


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every group of modules that import each other, directly or through others (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_two_modules_import_each_other():
    graph = grimp.build_graph("jobs_pipeline", include_external_packages=False)
    assert "jobs_pipeline.interfaces.launch" in graph.modules  # the graph is the package's
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for module in ("a", "a.one", "a.two", "a.three"):
        graph.add_module(module)
    graph.add_import(importer="a.one", imported="a.two")
    graph.add_import(importer="a.two", imported="a.one")
    graph.add_import(importer="a.three", imported="a.one")
    assert cycles(graph) == [["a.one", "a.two"]]


def test_only_dagster_private_reaches_into_dagsters_private_modules():
    private = re.compile(r"\bdagster\._")
    reaching = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if private.search(path.read_text())
    )
    assert reaching == ["dagster_private.py"]


def test_the_tests_mirror_the_package():
    """A test lives in the folder of the layer it tests, so a newcomer finds it by the
    module's path; what the tests share lives in support/, whole-project checks at the top."""
    tests = Path(__file__).parent
    folders = {
        path.name for path in tests.iterdir() if path.is_dir() and (path / "__init__.py").exists()
    }
    layers = {
        path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").exists()
    }
    assert folders - {"support"} <= layers, f"test folders with no layer: {folders - layers}"
    for folder in folders - {"support"}:
        assert any((tests / folder).glob("test_*.py")), f"{folder}/ holds no test"
    helpers = [
        path.name
        for folder in [tests, *(tests / name for name in folders - {"support"})]
        for path in folder.glob("*.py")
        if not path.name.startswith("test_") and path.name not in {"__init__.py", "conftest.py"}
    ]
    assert not helpers, f"helpers outside support/: {helpers}"


def test_no_test_module_imports_another():
    """What two test modules share is a helper, and helpers live in support/."""
    tests = Path(__file__).parent
    importing = sorted(
        str(path.relative_to(tests))
        for path in tests.rglob("*.py")
        if re.search(r"^from jobs_pipeline_tests\.(\w+\.)*test_\w+ import", path.read_text(), re.M)
    )
    assert importing == []
