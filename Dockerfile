# One image for every process of a deployment: the code server (and the run workers it
# starts), the webserver, the daemon, `jobs-pipeline setup`, the admin API and the metrics.
# docs/deploying.md, "In containers", says which command each runs and what it reads.
#
#   docker build -t jobs-pipeline .
#   docker build --build-arg BASE_IMAGE=registry.example.com/python:3.11-slim-bookworm -t jobs-pipeline .
#
# The base needs python3 (3.11 or 3.12) with venv; it is used for both stages, so the
# virtualenv's interpreter is the same path in each.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# uv installs the pinned set (constraints.txt) as `make install` does. It trusts the
# certificates SSL_CERT_FILE names, when a proxy in front of the package index needs one.
RUN python3 -m venv /opt/jobs-pipeline/venv \
 && /opt/jobs-pipeline/venv/bin/pip install --quiet --no-cache-dir uv==0.13.9
WORKDIR /opt/jobs-pipeline/app
COPY pyproject.toml constraints.txt README.md ./
COPY jobs_pipeline ./jobs_pipeline
COPY deploy ./deploy
# Installed in place (editable), like a checkout: deploy/dagster.yaml, which `setup` copies
# into DAGSTER_HOME, stays beside the package. No dev tools.
RUN /opt/jobs-pipeline/venv/bin/uv pip install --quiet --no-cache \
      --python /opt/jobs-pipeline/venv/bin/python --constraint constraints.txt -e . \
 && /opt/jobs-pipeline/venv/bin/uv pip uninstall --quiet \
      --python /opt/jobs-pipeline/venv/bin/python uv \
 && /opt/jobs-pipeline/venv/bin/python -m compileall -q /opt/jobs-pipeline

FROM ${BASE_IMAGE}
COPY --from=build /opt/jobs-pipeline /opt/jobs-pipeline
# A user of its own, never root. DAGSTER_HOME is where `setup` writes dagster.yaml and
# workspace.yaml: a volume shared by the processes of one deployment.
RUN useradd --system --create-home --home-dir /var/lib/jobs-pipeline --uid 10001 jobs \
 && mkdir -p /var/lib/jobs-pipeline/dagster_home \
 && chown jobs /var/lib/jobs-pipeline/dagster_home
ENV PATH=/opt/jobs-pipeline/venv/bin:$PATH \
    DAGSTER_HOME=/var/lib/jobs-pipeline/dagster_home \
    PYTHONUNBUFFERED=1
USER jobs
WORKDIR /var/lib/jobs-pipeline
# The code server by default; the other processes name their command (docs/deploying.md).
EXPOSE 4000 3000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "jobs_pipeline.definitions"]
