"""The systemd units in deploy/systemd/, as an operator installs them, pass systemd's own
check (`systemd-analyze verify`): every key known, every value parsed, every command
there. They are checked with the install folder (/opt/jobs-pipeline) being this checkout.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

from jobs_pipeline_tests.support.deployment import REPOSITORY

pytestmark = pytest.mark.processes

UNITS = REPOSITORY / "deploy" / "systemd"
INSTALLED_AT = "/opt/jobs-pipeline"
# Every long-running process of a deployment, and setup.
PROCESSES = {
    "jobs-pipeline-setup.service",
    "jobs-pipeline-code-server.service",
    "jobs-pipeline-webserver.service",
    "jobs-pipeline-webserver-read-only.service",
    "jobs-pipeline-daemon.service",
    "jobs-pipeline-admin-api.service",
    "jobs-pipeline-metrics.service",
    "jobs-pipeline-worker@.service",
}


def installed(folder: Path) -> list[Path]:
    """Each unit as installed from this checkout; the template as worker `a`."""
    written = []
    for unit in sorted(UNITS.glob("*.service")):
        name = unit.name.replace("@.", "@a.")
        target = folder / name
        target.write_text(unit.read_text().replace(INSTALLED_AT, str(REPOSITORY)))
        written.append(target)
    return written


def verify(*units: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian's systemd) is needed to check the units"
    return subprocess.run(
        [analyze, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_there_is_a_unit_for_every_process():
    assert {unit.name for unit in UNITS.glob("*.service")} == PROCESSES


def test_systemd_finds_nothing_wrong_with_any_unit(tmp_path):
    checked = verify(*installed(tmp_path))

    assert checked.returncode == 0, checked.stderr
    assert checked.stdout + checked.stderr == ""


def test_the_check_catches_a_wrong_unit(tmp_path):
    (unit,) = [u for u in installed(tmp_path) if u.name == "jobs-pipeline-daemon.service"]
    unit.write_text(unit.read_text().replace("[Service]", "[Service]\nKillMode=sometimes"))

    checked = verify(unit)

    assert "Failed to parse kill mode" in checked.stderr, checked.stderr
