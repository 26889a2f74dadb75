# syntax=docker/dockerfile:1
# One image for the API, the CPU workers, `kensaku migrate` and Flower (see docker-compose.yml).
# The GPU embed worker uses Dockerfile.gpu: same application, CUDA build of torch.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# 1. torch first, pinned, from the CPU index. From PyPI an unpinned torch (directly or through
#    sentence-transformers) brings several GB of CUDA libraries this image never uses.
#    The constraints (the project's tested pins plus this torch) keep every later install from
#    swapping the torch build or drifting from the versions CI ran.
ARG TORCH_VERSION=2.13.0
COPY constraints.txt ./
RUN pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu \
 && { cat constraints.txt; echo "torch==${TORCH_VERSION}"; } > /etc/pip-constraints.txt
ENV PIP_CONSTRAINT=/etc/pip-constraints.txt

# 2. The dependencies and the onnx extra (KENSAKU_BACKEND=onnx / onnx-int8), read from
#    pyproject.toml alone, so that editing the code does not invalidate this (slow) layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['onnx']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# 3. The application. Editable, because the migration runner reads migrations/ next to the
#    package sources (shared/db/migrate.py), which a wheel install would not carry.
COPY . .
RUN pip install --no-deps -e .

# 4. The default model, built into the image (`kensaku model build` downloads the ja-ginza wheel
#    for its chiVe vectors), so no container fetches anything at its first request.
ENV KENSAKU_MODELS_DIR=/opt/kensaku/models
RUN kensaku model build && rm -rf /root/.cache

# Prometheus multiprocess mode: uvicorn workers and Celery prefork children each write their
# metrics here and a scrape merges them (shared/metrics.py). The entrypoint empties it at start,
# because files left by a previous run would be merged into the new one.
ENV PROMETHEUS_MULTIPROC_DIR=/tmp/kensaku-metrics

RUN useradd --create-home --uid 10001 kensaku \
 && mkdir -p /data && chown kensaku:kensaku /data
USER 10001:10001

ENTRYPOINT ["/bin/sh", "-c", "if [ -n \"$PROMETHEUS_MULTIPROC_DIR\" ]; then rm -rf \"$PROMETHEUS_MULTIPROC_DIR\" && mkdir -p \"$PROMETHEUS_MULTIPROC_DIR\"; fi; exec \"$@\"", "entrypoint"]
# `kensaku serve` binds KENSAKU_HOST (default 127.0.0.1) and refuses a public address without
# API keys; docker-compose.yml sets both for the api service.
CMD ["kensaku", "serve", "--workers", "4"]
EXPOSE 8000 5555
