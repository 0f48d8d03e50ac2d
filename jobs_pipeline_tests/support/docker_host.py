"""A Docker daemon and a base image for the container tests, made on this machine.

    python -m jobs_pipeline_tests.support.docker_host    (what `make test-containers` runs)

No image registry is reachable here, so nothing is pulled: the base image the project's
Dockerfile builds on (`BASE_IMAGE`) is Debian bookworm with python3, made with
debootstrap from the Debian mirror apt already uses, with this machine's certificate
bundle (the package index is reached through it). Docker runs without touching the
host's network settings; containers use the host's network. Both are kept between runs:
a second call finds them and returns at once.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOCKER_DIR = Path(os.environ.get("JOBS_PIPELINE_DOCKER_DIR", "/var/lib/jobs-pipeline-docker"))
DOCKER_HOST = f"unix://{DOCKER_DIR}/docker.sock"
BASE_IMAGE = "jobs-pipeline-base:bookworm"
CERTIFICATES = Path("/etc/ssl/certs/ca-certificates.crt")
DAEMON_START_S = 60
NEEDED = {"dockerd": "docker.io", "debootstrap": "debootstrap", "docker-compose": "docker-compose"}


class NotReady(Exception):
    """What is missing, and the command that provides it."""


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args],
        env={**os.environ, "DOCKER_HOST": DOCKER_HOST},
        capture_output=True,
        text=True,
        check=check,
    )


def daemon_answers() -> bool:
    return docker("version", "--format", "{{.Server.Version}}", check=False).returncode == 0


def start_daemon() -> None:
    """dockerd with its own folders and socket, leaving iptables and bridges alone."""
    DOCKER_DIR.mkdir(parents=True, exist_ok=True)
    log = (DOCKER_DIR / "dockerd.log").open("ab")
    subprocess.Popen(
        [
            "dockerd",
            f"--data-root={DOCKER_DIR / 'root'}",
            f"--exec-root={DOCKER_DIR / 'exec'}",
            f"--pidfile={DOCKER_DIR / 'docker.pid'}",
            f"--host={DOCKER_HOST}",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--ip-forward=false",
            "--ip-masq=false",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    give_up = time.monotonic() + DAEMON_START_S
    while not daemon_answers():
        if time.monotonic() > give_up:
            raise NotReady(f"dockerd did not answer within {DAEMON_START_S} s: see {log.name}")
        time.sleep(0.5)


def debian_mirror() -> str:
    """The first Debian mirror apt is configured with."""
    for sources in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        if not sources.is_file():
            continue
        for line in sources.read_text().splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] or words[:1] == ["deb"]:
                for word in words[1:]:
                    if word.startswith("http") and word.rstrip("/").endswith("/debian"):
                        return word
    raise NotReady("no Debian mirror found in /etc/apt: debootstrap needs one")


def make_base_image() -> None:
    with tempfile.TemporaryDirectory(dir=DOCKER_DIR) as folder:
        root = Path(folder) / "root"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                str(root),
                debian_mirror(),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        shutil.copyfile(CERTIFICATES, root / "etc/ssl/certs/ca-certificates.crt")
        archive = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            [
                "docker",
                "import",
                "--change",
                f"ENV SSL_CERT_FILE={CERTIFICATES}",
                "--change",
                'CMD ["python3"]',
                "-",
                BASE_IMAGE,
            ],
            stdin=archive.stdout,
            env={**os.environ, "DOCKER_HOST": DOCKER_HOST},
            check=True,
            stdout=subprocess.DEVNULL,
        )
        if archive.wait() != 0:
            raise NotReady("tar of the debootstrapped tree failed")


def prepare() -> None:
    missing = [package for command, package in NEEDED.items() if shutil.which(command) is None]
    if missing:
        raise NotReady(f"missing: apt-get install -y --no-install-recommends {' '.join(missing)}")
    if not daemon_answers():
        start_daemon()
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        make_base_image()


def main() -> int:
    try:
        prepare()
    except (NotReady, subprocess.CalledProcessError) as failure:
        print(f"docker_host: {failure}", file=sys.stderr)
        return 1
    print(f"DOCKER_HOST={DOCKER_HOST} base image {BASE_IMAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
