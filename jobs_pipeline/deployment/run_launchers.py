"""Where a deployment's runs execute, as its dagster.yaml says: in the code server's run
workers (deploy/dagster.yaml as shipped), each in a container of its own, or on a fleet
of workers. `jobs-pipeline setup --runs-in` writes the matching file.
"""

from jobs_pipeline.storage.embedded import INSTANCE_CONFIG

# Where runs execute: in the code server's run workers (deploy/dagster.yaml as it is), each
# in a container of its own, or on a fleet of workers; the other two replace the
# `run_launcher` of deploy/dagster.yaml with deploy/run_launchers/<name>.yaml's.
RUNS_IN = ("code-server", "containers", "fleet")
DEFAULT_RUNS_IN = "code-server"
RUN_LAUNCHERS = INSTANCE_CONFIG.parent / "run_launchers"


def instance_config_text(runs_in: str) -> str:
    """deploy/dagster.yaml, its `run_launcher` block (with the comment above it) replaced
    by the chosen one's; comments kept, so the file explains itself where it is copied.
    """
    text = INSTANCE_CONFIG.read_text()
    if runs_in == DEFAULT_RUNS_IN:
        return text
    if runs_in not in RUNS_IN:
        raise ValueError(f"runs in {runs_in!r}: not one of {', '.join(RUNS_IN)}")
    lines = text.splitlines(keepends=True)
    first = last = lines.index("run_launcher:\n")
    while first > 0 and lines[first - 1].startswith("#"):
        first -= 1
    last += 1
    while last < len(lines) and (lines[last].startswith(" ") or not lines[last].strip()):
        last += 1
    launcher = (RUN_LAUNCHERS / f"{runs_in}.yaml").read_text()
    return "".join([*lines[:first], launcher, "\n", *lines[last:]])
