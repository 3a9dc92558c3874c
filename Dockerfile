# The image of every service: telemetry-broker, -streamer, -collector and -api. One recipe; the build
# argument SERVICE picks the service, and with it the package, the port, the environment prefix, the
# command and the extras (the broker's data directory, the streamer's CSV): the `svc-*` stages below.
#
# Build from the repository root (the build context is the whole uv workspace):
#   docker build --build-arg SERVICE=broker -t telemetry-broker:dev .
#   task docker:build                       (all four)
# Needs BuildKit (DOCKER_BUILDKIT=1 or buildx) for the cache mounts and for skipping the stages the
# chosen service does not use. No `# syntax=` line on purpose: the builtin Dockerfile frontend is
# enough and a syntax image would need a registry pull.

ARG PYTHON_IMAGE=python:3.13-slim
# broker, streamer, collector or api.
ARG SERVICE

# --- manifests: only the files uv needs to resolve the workspace ------------------------------------
# The dependency layer below is keyed on these, so editing source code does not reinstall
# third-party packages (BuildKit compares the copied content, not this stage's cache key).
FROM ${PYTHON_IMAGE} AS manifests
WORKDIR /src
COPY . .
RUN find . -type f ! -name pyproject.toml ! -name uv.lock ! -name .python-version -delete \
 && find . -mindepth 1 -type d -empty -delete

# --- builder: uv from PyPI, the service's locked venv in /app/.venv ---------------------------------
FROM ${PYTHON_IMAGE} AS builder
ARG SERVICE
ARG UV_VERSION=0.13.9
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --disable-pip-version-check "uv==${UV_VERSION}"
ENV UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.13 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Third-party dependencies only (cached while uv.lock and the pyproject files are unchanged).
COPY --from=manifests /src /src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-install-workspace --package "telemetry-${SERVICE}"
# Then the workspace members, installed as wheels (--no-editable) so the venv stands alone.
COPY . /src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable --package "telemetry-${SERVICE}"

# --- base: the venv and nothing else, for a non-root numeric user -----------------------------------
FROM ${PYTHON_IMAGE} AS base
ARG APP_UID=10001
RUN groupadd --system --gid "${APP_UID}" telemetry \
 && useradd --system --uid "${APP_UID}" --gid "${APP_UID}" --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin telemetry
COPY --from=builder /app/.venv /app/.venv
WORKDIR /app
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# --- what differs: port, environment prefix, extras, command (BuildKit builds only the chosen one) --
# python is PID 1 (no shell) and gets SIGTERM itself: the services drain on it.
FROM base AS svc-broker
ARG APP_UID=10001
# The durable log lives here; mount a volume (the chart uses a PVC).
RUN install -d -o "${APP_UID}" -g "${APP_UID}" /var/lib/telemetry/broker
ENV BROKER_HOST=0.0.0.0 \
    BROKER_PORT=8001 \
    BROKER_LOG_FORMAT=json \
    BROKER_DATA_DIR=/var/lib/telemetry/broker
VOLUME ["/var/lib/telemetry/broker"]
EXPOSE 8001
LABEL org.opencontainers.image.description="the durable, partitioned message broker (HTTP API over the log)"
CMD ["python", "-m", "telemetry_broker"]

FROM base AS svc-streamer
# The CSV the streamer replays in a loop (STREAMER_CSV_PATH).
COPY data/dcgm_metrics_20250718_134233.csv /app/data/dcgm_metrics_20250718_134233.csv
ENV STREAMER_HOST=0.0.0.0 \
    STREAMER_PORT=8002 \
    STREAMER_LOG_FORMAT=json \
    STREAMER_CSV_PATH=/app/data/dcgm_metrics_20250718_134233.csv
EXPOSE 8002
LABEL org.opencontainers.image.description="replays the DCGM CSV into the broker"
CMD ["python", "-m", "telemetry_streamer"]

FROM base AS svc-collector
ENV COLLECTOR_HOST=0.0.0.0 \
    COLLECTOR_PORT=8003 \
    COLLECTOR_LOG_FORMAT=json
EXPOSE 8003
LABEL org.opencontainers.image.description="consumes telemetry from the broker and stores it in PostgreSQL"
CMD ["python", "-m", "telemetry_collector"]

FROM base AS svc-api
ENV API_HOST=0.0.0.0 \
    API_PORT=8000 \
    API_LOG_FORMAT=json
EXPOSE 8000
LABEL org.opencontainers.image.description="REST API over the stored GPU telemetry"
CMD ["python", "-m", "telemetry_api"]

# --- runtime: the chosen service -------------------------------------------------------------------
FROM svc-${SERVICE} AS runtime
ARG SERVICE
ARG APP_UID=10001
ENV TELEMETRY_SERVICE=${SERVICE}
LABEL org.opencontainers.image.title="telemetry-${SERVICE}"
USER ${APP_UID}:${APP_UID}
# Docker-only liveness check (Kubernetes uses the chart's probes instead); the port variable is
# <SERVICE>_PORT, so a port changed at `docker run` is followed.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ[os.environ['TELEMETRY_SERVICE'].upper() + '_PORT'], timeout=2)"]
