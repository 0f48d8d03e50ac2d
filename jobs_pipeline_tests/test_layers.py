"""What import-linter's contracts (pyproject.toml, run by `make lint`) do not see:
Dagster's private modules reached from one module only, and the tests laid out as the
package is.
"""

import re
from pathlib import Path

import jobs_pipeline

PACKAGE = Path(jobs_pipeline.__file__).parent


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


def test_no_test_module_imports_another_nor_conftest():
    """What two test modules share is a helper, and helpers live in support/; conftest
    holds fixtures, which pytest gives by name.
    """
    tests = Path(__file__).parent
    importing = sorted(
        str(path.relative_to(tests))
        for path in tests.rglob("*.py")
        if re.search(
            r"^from jobs_pipeline_tests\.(\w+\.)*(test_\w+|conftest) import", path.read_text(), re.M
        )
    )
    assert importing == []
