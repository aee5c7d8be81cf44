# syntax=docker/dockerfile:1
# hpc-billing: the collector daemon (`hpc-billing run`: scheduler, probes, metrics, API).
#
#   docker build --build-arg VERSION="$(git describe --tags --always)" \
#                --build-arg GIT_REVISION="$(git rev-parse HEAD)" \
#                -t hpc-billing:"$(git rev-parse --short HEAD)" .
#
# Tag images by commit (immutable); never deploy :latest. The install steps below are
# exercised outside Docker by tests/deploy/test_image.py (same pip commands, same
# HEALTHCHECK, run as a non-root user).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder: wheels only
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.cfg setup.py MANIFEST.in README.md ./
COPY docs/api/openapi.yaml docs/api/openapi.yaml
COPY billing/ billing/
COPY collector/ collector/
# hpc-billing and every dependency as wheels (psycopg2-binary bundles libpq, so the
# runtime stage needs no compiler and no -dev package).
RUN pip wheel --wheel-dir /wheels .

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
ARG VERSION=dev
ARG GIT_REVISION=unknown
LABEL org.opencontainers.image.title="hpc-billing" \
      org.opencontainers.image.description="Accounting collector for Slurm clusters: sacct into PostgreSQL, priced with rate cards" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_REVISION}"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/hpc-billing/bin:$PATH \
    HPC_BILLING_BIND=0.0.0.0:8000 \
    HPC_BILLING_DATA_DIR=/var/lib/hpc-billing

# A system user with no shell and no password; data dir for the embedded server only.
RUN groupadd --system --gid 10001 hpcb \
 && useradd --system --uid 10001 --gid hpcb --home-dir /var/lib/hpc-billing \
        --shell /usr/sbin/nologin hpcb \
 && install -d -o hpcb -g hpcb -m 0750 /var/lib/hpc-billing

# The wheels are bind-mounted from the builder, so they never become a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/hpc-billing \
 && /opt/hpc-billing/bin/pip install --no-cache-dir --no-index --find-links /wheels hpc-billing

# The bundled real sacct export and demo card (compose collects from them by default)
# and the realistic example card.
COPY collector/data/lab-sample.psv collector/data/demo-rates.toml deploy/rates.example.toml \
     /usr/share/hpc-billing/

USER hpcb
WORKDIR /var/lib/hpc-billing
EXPOSE 8000

# /readyz: database answers, schema at head, data fresh. Python's stdlib, no curl in the
# image; the port follows HPC_BILLING_BIND. Any answer but 200 (or none) exits 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('HPC_BILLING_BIND', ':8000').rpartition(':')[2]; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % port, timeout=4)"]

STOPSIGNAL SIGTERM
CMD ["hpc-billing", "run"]
