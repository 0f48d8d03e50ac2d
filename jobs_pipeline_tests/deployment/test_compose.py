"""deploy/compose/docker-compose.yml, as shipped, is a file Debian's `docker-compose`
(1.29) accepts, with a service for every process of a deployment and the fleet's and the
trial's behind their profiles. (Bringing it up is not tested yet: nginx's, Redis's and
PostgreSQL's images cannot be pulled where the tests run.)
"""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from jobs_pipeline_tests.support.deployment import REPOSITORY

pytestmark = pytest.mark.container

COMPOSE_FILE = REPOSITORY / "deploy" / "compose" / "docker-compose.yml"
ALWAYS = {
    "setup",
    "code-server",
    "webserver",
    "webserver-read-only",
    "daemon",
    "admin-api",
    "metrics",
    "nginx",
}


def compose(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """docker-compose on a copy of the file beside an (empty) env file, as an operator's."""
    binary = shutil.which("docker-compose")
    assert binary, "Debian's docker-compose is needed (apt-get install docker-compose)"
    copy = folder / "docker-compose.yml"
    copy.write_text(COMPOSE_FILE.read_text().replace("../nginx/", f"{REPOSITORY}/deploy/nginx/"))
    (folder / "jobs-pipeline.env").write_text("")
    return subprocess.run(
        [binary, "-f", str(copy), *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_compose_accepts_the_file(tmp_path):
    checked = compose(tmp_path, "config", "-q")
    assert checked.returncode == 0, checked.stderr


def test_every_process_is_a_service_and_the_fleet_and_trial_are_profiles(tmp_path):
    rendered = compose(tmp_path, "config")
    assert rendered.returncode == 0, rendered.stderr

    services = yaml.safe_load(rendered.stdout)["services"]
    profiles = {name: tuple(service.get("profiles", ())) for name, service in services.items()}
    assert {name for name, named in profiles.items() if not named} == ALWAYS
    assert {name: named for name, named in profiles.items() if named} == {
        "redis": ("fleet",),
        "worker": ("fleet",),
        "postgres": ("trial",),
    }
