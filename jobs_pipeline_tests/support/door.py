"""The door of docs/deploying.md started beside a deployment: nginx in front of two webservers.

`open_door` adds to a running deployment what "Deploying" adds for the door: a second
webserver started with `--read-only`, the admin API serving the door (`--ui`,
`--ui-read-only`, `UI_SESSION_SECRET`, `UI_VIEWERS`, `UI_TRUSTED_PROXIES`), and Debian's
nginx with the repository's `deploy/nginx/jobs-pipeline-door.conf` and
`jobs-pipeline-door-http.conf` included as they are, in a site like
`deploy/nginx/jobs-pipeline.conf` on a free port (no TLS), listening on loopback and on
this machine's other address, where another host would knock.
"""

import http.client
import json
import os
import secrets
import subprocess
import urllib.parse
from dataclasses import dataclass
from email.message import Message
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest

from jobs_pipeline_tests.support.deployment import (
    HOST,
    REPOSITORY,
    Deployment,
    webserver_argv,
)
from jobs_pipeline_tests.support.processes import JOBS_PIPELINE, free_port, wait_for_url

NGINX = Path("/usr/sbin/nginx")
DOOR_CONF = REPOSITORY / "deploy" / "nginx" / "jobs-pipeline-door.conf"
DOOR_HTTP_CONF = REPOSITORY / "deploy" / "nginx" / "jobs-pipeline-door-http.conf"
COOKIE = "jobs_pipeline_ui"
STARTUP_DEADLINE_S = 120


@dataclass
class Door:
    deployment: Deployment
    port: int
    read_only_port: int
    api_port: int
    secret: str
    folder: Path
    # This machine's address other than loopback, where nginx listens too.
    other_address: str

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        *,
        cookie: str | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        port: int | None = None,
        from_elsewhere: bool = False,
    ) -> "Answer":
        """One HTTP request, redirects not followed, as a browser's first hop sees it;
        `from_elsewhere`: from this machine's other address to it, as another host's would.
        """
        address = self.other_address if from_elsewhere else HOST
        connection = http.client.HTTPConnection(
            address,
            port or self.port,
            timeout=60,
            source_address=(address, 0) if from_elsewhere else None,
        )
        sent = dict(headers or {})
        if cookie is not None:
            sent["Cookie"] = f"{COOKIE}={cookie}"
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return Answer(response.status, response.headers, response.read())
        finally:
            connection.close()

    def sign_in(
        self,
        token: str,
        next_path: str = "/",
        *,
        headers: dict[str, str] | None = None,
        from_elsewhere: bool = False,
    ) -> "Answer":
        form = urllib.parse.urlencode({"token": token, "next": next_path}).encode()
        return self.request(
            "POST",
            "/door/sign-in",
            body=form,
            headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
            from_elsewhere=from_elsewhere,
        )

    def session_of(self, token: str) -> str:
        """The session cookie a sign-in with `token` gives."""
        answer = self.sign_in(token)
        assert answer.status == 303, (answer.status, answer.text)
        cookie = answer.cookie(COOKIE)
        assert cookie is not None, answer.headers
        return cookie

    def graphql(self, cookie: str | None, query: str, **variables: Any) -> "Answer":
        """A GraphQL request through the door, as the UI makes it (same-site, its cookie)."""
        body = json.dumps({"query": query, "variables": variables}).encode()
        return self.request(
            "POST",
            "/graphql",
            cookie=cookie,
            body=body,
            headers={"Content-Type": "application/json", "Origin": self.url},
        )

    def logs(self) -> str:
        """Everything every process and nginx has logged."""
        texts = [self.deployment.log_text(name) for name in self.deployment.processes]
        texts += [path.read_text(errors="replace") for path in self.folder.glob("*.log")]
        return "\n".join(texts)


@dataclass
class Answer:
    status: int
    headers: Message  # names in any case, as HTTP has them
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def cookie(self, name: str) -> str | None:
        jar: SimpleCookie = SimpleCookie()
        for header in self.headers.get_all("Set-Cookie") or []:
            jar.load(header)
        return jar[name].value if name in jar else None


def nginx_conf(door: Door, webserver: int, behind_balancer: bool) -> str:
    """jobs-pipeline.conf's site without TLS, around the door's files as shipped; with
    `behind_balancer`, the client's address taken from X-Forwarded-For when the balancer
    (this machine's other address) connects, as docs/deploying.md says to configure it.
    """
    folder = door.folder
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers write the temp folders
    temp = folder / "temp"
    real_ip = (
        f"set_real_ip_from {door.other_address}; real_ip_header X-Forwarded-For;"
        " real_ip_recursive on;"
        if behind_balancer
        else ""
    )
    return f"""{user}daemon off;
worker_processes 1;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    access_log {folder / "access.log"};
    client_body_temp_path {temp / "body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
    include {DOOR_HTTP_CONF};
    upstream dagster_webserver {{ server {HOST}:{webserver}; }}
    upstream dagster_webserver_read_only {{ server {HOST}:{door.read_only_port}; }}
    upstream jobs_pipeline_admin_api {{ server {HOST}:{door.api_port}; }}
    server {{
        listen {HOST}:{door.port};
        listen {door.other_address}:{door.port};
        {real_ip}
        include {DOOR_CONF};
    }}
}}
"""


def open_door(
    deployment: Deployment,
    viewers: str,
    *,
    sso_email_header: str | None = None,
    behind_balancer: bool = False,
    name: str = "door",
) -> Door:
    """The read-only webserver, the admin API with the door, and nginx, each started as
    docs/deploying.md says, once the deployment's own processes are up; behind a company
    sign-on with `sso_email_header`; with `behind_balancer`, behind a load balancer that
    terminates TLS (this machine's other address, listed in UI_TRUSTED_PROXIES). `name`
    tells one door's processes from another's.
    """
    if not NGINX.exists():
        pytest.fail(
            f"{NGINX} is missing: the door's tests run Debian's nginx. Install it with"
            " `apt-get install -y nginx` (.ci/run does this on CI)."
        )
    folder = deployment.folder / name
    (folder / "temp").mkdir(parents=True, exist_ok=True)
    door = Door(
        deployment,
        free_port(),
        free_port(),
        free_port(),
        secrets.token_urlsafe(48),
        folder,
        other_address(),
    )
    trusted = {"UI_TRUSTED_PROXIES": door.other_address} if behind_balancer else {}

    read_only = deployment.start(
        f"{name}-webserver-read-only",
        [*webserver_argv(deployment.workspace, door.read_only_port), "--read-only"],
        deployment.dagster_environment,
    )
    wait_for_url(
        f"http://{HOST}:{door.read_only_port}/server_info",
        read_only.popen,
        read_only.log,
        STARTUP_DEADLINE_S,
    )
    sso = ["--ui-sso-email-header", sso_email_header] if sso_email_header else []
    api = deployment.start(
        f"{name}-admin-api",
        [
            str(JOBS_PIPELINE),
            "admin-api",
            "--port",
            str(door.api_port),
            "--ui",
            deployment.webserver_url,
            "--ui-read-only",
            f"http://{HOST}:{door.read_only_port}",
            *sso,
        ],
        {
            **deployment.code_environment,
            "UI_SESSION_SECRET": door.secret,
            "UI_VIEWERS": viewers,
            **trusted,
        },
    )
    wait_for_url(
        f"http://{HOST}:{door.api_port}/api/admin/openapi.json",
        api.popen,
        api.log,
        STARTUP_DEADLINE_S,
    )
    conf = folder / "nginx.conf"
    conf.write_text(nginx_conf(door, deployment.webserver_port, behind_balancer))
    checked = subprocess.run(
        [str(NGINX), "-t", "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    nginx = deployment.start(
        f"{name}-nginx",
        [str(NGINX), "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")],
        deployment.dagster_environment,
    )
    wait_for_url(f"{door.url}/api/admin/openapi.json", nginx.popen, nginx.log, STARTUP_DEADLINE_S)
    return door


def other_address() -> str:
    """An address of this machine that is not loopback: where another host would knock."""
    listed = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in listed.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            return fields[fields.index("inet") + 1].split("/")[0]
    pytest.fail(f"this machine has no address but loopback:\n{listed.stdout}{listed.stderr}")
