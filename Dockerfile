# fedsim's app image: the SuperExec containers that run the ServerApp and the ClientApps,
# and the attacker worker. The SuperLink and SuperNodes use Flower's official images.
# CPU torch by default (a small image); for the attacker on a GPU host build with
#   docker compose build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY fedsim fedsim
COPY clients clients
COPY server server
COPY attacker attacker
COPY lab lab
COPY experiments experiments
RUN pip install --extra-index-url "$TORCH_INDEX" -e .
ENTRYPOINT ["flower-superexec"]
