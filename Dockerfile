# The project's images, as build targets of one file (the compose file and the Pulumi program pick them):
#   platform  every Python container but the API: MLflow server, Prefect server and worker, the one-shot
#             jobs (the last stage, so a plain `docker build` makes it)
#   serving   the slim API image: only what `python -m serving` imports (requirements-serving.lock)
#   balancer  HAProxy from Debian's packages in front of the API replicas (infra/balancer/haproxy.cfg)
# The stages share their first layers (the base image, the user, the environment).
ARG PYTHON_IMAGE=python:3.11-slim

# Build stages: a virtualenv with hash-pinned dependencies, nothing else.
FROM ${PYTHON_IMAGE} AS build-base
# Trust the image's CA bundle (also the one a proxying build machine puts there).
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=180
RUN python -m venv /opt/venv

FROM build-base AS build
COPY requirements.lock /tmp/requirements.lock
# --no-deps: the lock is complete, so pip installs exactly it (every file checked against its hash).
# Left out: xgboost's NCCL wheel (multi-GPU collectives, ~300 MB), useless on a CPU image.
RUN sed -i '/^nvidia-nccl-cu12==/,/[^\\]$/d' /tmp/requirements.lock \
    && /opt/venv/bin/pip install --no-deps --require-hashes -r /tmp/requirements.lock \
    && find /opt/venv/lib -depth -type d -name tests -path '*/site-packages/*/*' \
        -not -path '*/numpy/*' -not -path '*/pandas/*' -not -path '*/scipy/*' -exec rm -rf {} +

FROM build-base AS build-serving
COPY requirements-serving.lock /tmp/requirements.lock
# No bytecode here (half the size of the packages): the serving stage compiles what the server imports.
# No test suites, no pip: nothing in this image installs anything.
RUN /opt/venv/bin/pip install --no-deps --no-compile --require-hashes -r /tmp/requirements.lock \
    && find /opt/venv/lib -depth -type d -name tests -path '*/site-packages/*/*' -exec rm -rf {} + \
    && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools

# What every Python image runs with: the environment, a non-root user, the state folders.
FROM ${PYTHON_IMAGE} AS base
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/app \
    NML_DISABLE_USAGE_LOGGING=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    REGGAETON_STATE_DIR=/state
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /app /state/model-cache /state/prediction-spool /state/watchdog /state/archive /mlartifacts \
    && chown -R app:app /state /mlartifacts
WORKDIR /app
# The API's health by default; the compose file and the Pulumi program set one per container.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=5 \
    CMD ["python", "-m", "infra.healthcheck"]
EXPOSE 8000

# The slim API image: its own small virtualenv and only the packages the server imports.
FROM base AS serving
COPY --from=build-serving /opt/venv /opt/venv
COPY reggaeton/ reggaeton/
COPY adapters/ adapters/
COPY serving/ serving/
COPY infra/__init__.py infra/healthcheck.py infra/
# Bytecode for exactly the modules the server loads (imports, and the model's classes): a fast start
# without the ~200 MB of bytecode for modules it never touches. A missing package fails the build here.
# HOME elsewhere: importing Prefect writes its profile, which must not end up owned by root.
# Alembic: the replica that finds the log behind upgrades it (adapters/log_migrations).
RUN PYTHONDONTWRITEBYTECODE= HOME=/tmp/warm-up python -c "import serving.__main__, serving.app, adapters.registry, \
reggaeton.model, reggaeton.scorer, mlflow.sklearn, mlflow.pyfunc, skops.io, prefect.events, psycopg, \
imblearn.pipeline, imblearn.over_sampling, \
adapters.log_migrations, alembic.command, alembic.config, \
sqlalchemy.dialects.postgresql, uvicorn.loops.uvloop, uvicorn.protocols.http.httptools_impl, uvicorn.lifespan.on"
USER 10001:10001
CMD ["python", "-m", "serving"]

# The load balancer: HAProxy from the base image's Debian package sources, the healthcheck script.
FROM ${PYTHON_IMAGE} AS balancer
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/*
COPY infra/balancer/haproxy.cfg /etc/haproxy/haproxy.cfg
RUN haproxy -c -q -f /etc/haproxy/haproxy.cfg
WORKDIR /app
COPY infra/__init__.py infra/healthcheck.py infra/
USER haproxy
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=30 \
    CMD ["python", "-m", "infra.healthcheck", "http://127.0.0.1:8404/health"]
CMD ["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]

# The platform image: the whole project and every runtime dependency.
FROM base AS platform
# libgomp1: the OpenMP runtime LightGBM (through NannyML) loads; the slim image lacks it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
COPY reggaeton/ reggaeton/
COPY adapters/ adapters/
COPY flows/ flows/
COPY serving/ serving/
COPY monitoring/ monitoring/
COPY infra/ infra/
COPY embedded/ embedded/
COPY cli/ cli/
# The operator's command line on PATH (`docker-compose exec worker reggaeton status`); the source is
# on PYTHONPATH, so a two-line launcher does what an installed console script would.
RUN printf '#!/bin/sh\nexec python -m cli "$@"\n' > /opt/venv/bin/reggaeton && chmod 755 /opt/venv/bin/reggaeton
# prefect.yam[l]: the deployments file, copied when present.
COPY pyproject.toml README.md prefect.yam[l] ./
USER 10001:10001
CMD ["python", "-m", "serving"]
