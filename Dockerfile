# One image for every role: `kd serve` (API), `kd worker` (one per GPU), `kd migrate`.
# docker build -t kdservice . ; docker compose up (see docker-compose.yml and the README)
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    KD_DATA_DIR=/data \
    KD_HOST=0.0.0.0 \
    KD_PORT=8000

# PyPI's torch wheel for Linux x86_64 carries CUDA: the same image runs on GPU hosts
# (with the NVIDIA container toolkit) and on CPU-only hosts.
RUN pip install "torch>=2.4" "torchvision>=0.19"

WORKDIR /srv
COPY pyproject.toml README.md ./
COPY kdcore ./kdcore
COPY kdservice ./kdservice
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install ".[flower]"

# never run as root; /data holds uploads, job outputs and checkpoints (a volume)
RUN useradd --create-home --uid 10001 kd && mkdir -p /data && chown kd:kd /data
USER kd
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
    CMD python -c "import httpx,os; httpx.get(f'http://127.0.0.1:{os.environ[\"KD_PORT\"]}/healthz', timeout=2).raise_for_status()" || exit 1

ENTRYPOINT ["kd"]
CMD ["serve"]
