# Stand-ins for Flower's official images flwr/superlink, flwr/supernode and flwr/superexec,
# for hosts that cannot pull them (`fedsim images build` tags them flwr/ROLE:FLWR_VERSION):
# the pinned flwr on a Python base, run as the official images run it (user app, uid 49999,
# working folder /app, the role's command as entrypoint), so docker-compose.yml runs
# unchanged. One stage per role: docker build --target superlink|supernode|superexec.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS base
ARG FLWR_VERSION
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
ARG PIP_CONSTRAINT
ARG PIP_DEFAULT_TIMEOUT
ARG PIP_CERT_URL
ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
COPY deploy/with-lent-pip.sh /usr/local/bin/
RUN test -n "$FLWR_VERSION" && with-lent-pip.sh pip install "flwr==${FLWR_VERSION}" \
    && useradd --uid 49999 --create-home --home-dir /app app
WORKDIR /app
USER app

FROM base AS superlink
ENTRYPOINT ["flower-superlink"]

FROM base AS supernode
ENTRYPOINT ["flower-supernode"]

FROM base AS superexec
ENTRYPOINT ["flower-superexec"]
