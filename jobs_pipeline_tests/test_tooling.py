"""The ways a change is checked agree: `make lint`, the pre-commit hooks and CI run the
same tools, and the tools are the versions constraints.txt pins.
"""

import re
from importlib.metadata import version
from pathlib import Path

import yaml

REPOSITORY = Path(__file__).resolve().parents[1]


def make_recipe(target: str) -> list[str]:
    """The commands of a Makefile target, `$(BIN)/` read as `.venv/bin/`."""
    lines = (REPOSITORY / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"^{target}:", line))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip().replace("$(BIN)/", ".venv/bin/"))
    return recipe


def test_the_pre_commit_hooks_run_what_make_lint_runs():
    config = yaml.safe_load((REPOSITORY / ".pre-commit-config.yaml").read_text())
    hooks = [hook["entry"] for repo in config["repos"] for hook in repo["hooks"]]
    assert hooks == make_recipe("lint")


def test_the_tools_installed_are_the_pinned_ones():
    pins = dict(
        line.split("==", 1)
        for line in (REPOSITORY / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    for tool in ("ruff", "mypy", "vulture", "import-linter", "pytest", "pytest-xdist"):
        assert pins[tool] == version(tool), tool
