# One image for every Python container of the stack: API, MLflow server, Prefect server and worker,
# and the one-shot bootstrap job. Each container picks its command (see docker-compose.yml).
ARG PYTHON_IMAGE=python:3.11-slim

# Build stage: a virtualenv with the hash-pinned runtime dependencies, nothing else.
FROM ${PYTHON_IMAGE} AS build
# Trust the image's CA bundle (also the one a proxying build machine puts there).
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=180
RUN python -m venv /opt/venv
COPY requirements.lock /tmp/requirements.lock
# --no-deps: the lock is complete, so pip installs exactly it (every file checked against its hash).
# Left out: xgboost's NCCL wheel (multi-GPU collectives, ~300 MB), useless on a CPU image.
RUN sed -i '/^nvidia-nccl-cu12==/,/[^\\]$/d' /tmp/requirements.lock \
    && /opt/venv/bin/pip install --no-deps --require-hashes -r /tmp/requirements.lock \
    && find /opt/venv/lib -depth -type d -name tests -path '*/site-packages/*/*' \
        -not -path '*/numpy/*' -not -path '*/pandas/*' -not -path '*/scipy/*' -exec rm -rf {} +

# Runtime stage: the virtualenv, the source, a non-root user.
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/app \
    NML_DISABLE_USAGE_LOGGING=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    REGGAETON_STATE_DIR=/state
# libgomp1: the OpenMP runtime LightGBM (through NannyML) loads; the slim image lacks it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /app /state/model-cache /state/prediction-spool /state/watchdog /mlartifacts \
    && chown -R app:app /state /mlartifacts
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
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
# The API's health by default; the compose file and the Pulumi program set one per container.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=5 \
    CMD ["python", "-m", "infra.healthcheck"]
EXPOSE 8000
CMD ["python", "-m", "serving"]
