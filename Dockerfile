# fedsim's app image: the SuperExec containers that run the ServerApp and the ClientApps,
# and the attacker worker. The SuperLink and SuperNodes use Flower's official images (or
# their local stand-ins: `fedsim images build`, README).
# BASE_IMAGE: any image with Python 3.10+ and pip (`fedsim images build` makes a Debian one
# with debootstrap where no registry is reachable).
# CPU torch by default (a small image); for the attacker on a GPU host build with
#   docker compose build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
# The PIP_* arguments lend a build the host's pip settings (PIP_CERT_URL: its CA bundle;
# `fedsim images build` sets them; unset, pip's defaults apply); an empty TORCH_INDEX adds
# no index.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
ARG PIP_CONSTRAINT
ARG PIP_DEFAULT_TIMEOUT
ARG PIP_CERT_URL
ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
COPY deploy/with-lent-pip.sh /usr/local/bin/
COPY pyproject.toml ./
# the dependencies first, from pyproject.toml alone: a change of fedsim's code rebuilds only
# the layers below
RUN python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
print("\n".join(p["project"]["dependencies"] + p["build-system"]["requires"]))' \
    > /tmp/requirements.txt \
    && with-lent-pip.sh pip install ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} \
       -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY README.md ./
COPY fedsim fedsim
COPY clients clients
COPY server server
COPY attacker attacker
COPY lab lab
COPY experiments experiments
RUN pip install --no-deps --no-build-isolation -e .
# LPIPS' backbones, verified, in a folder every user of the image reads (README, Leakage metrics)
ENV FEDSIM_LPIPS_DIR=/opt/fedsim/lpips
RUN with-lent-pip.sh fedsim lpips install
# the embedded data sets, built by a container's first process and read by the next ones
# (fedsim/data/disk_cache.py): a folder any user of the image can write
ENV FEDSIM_DATA_CACHE=/tmp/fedsim-datasets
ENTRYPOINT ["flower-superexec"]
