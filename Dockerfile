# One image for every role: `kd serve` (API), `kd worker` (one per GPU), `kd migrate`.
#
#   docker build -t kdservice:cuda .                               # GPU hosts (the default)
#   docker build --build-arg TORCH_FLAVOUR=cpu -t kdservice:cpu .  # CPU-only hosts, smaller
#
# Two stages: `build` makes the wheel from the source tree; the image installs that wheel,
# as users install it, and holds nothing else of the checkout. tests/deploy/test_wheel.py
# runs these same commands (the wheel built, then installed into a fresh virtual
# environment outside the repository) and starts every role from it; docs/operations.md
# ("The image") says how to build and smoke-test the image where Docker runs.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-deps --wheel-dir /dist .

FROM ${PYTHON_IMAGE} AS runtime
# cuda: PyPI's torch wheels for Linux x86_64, which carry CUDA (run with the NVIDIA
# container toolkit; they also run on CPU-only hosts); cpu: PyTorch's CPU-only wheels
ARG TORCH_FLAVOUR=cuda
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    KD_DATA_DIR=/data \
    KD_HOST=0.0.0.0 \
    KD_PORT=8000

RUN case "$TORCH_FLAVOUR" in \
      cuda) pip install "torch>=2.4" "torchvision>=0.19" ;; \
      cpu) pip install --index-url "$TORCH_CPU_INDEX" "torch>=2.4" "torchvision>=0.19" ;; \
      *) echo "TORCH_FLAVOUR must be cuda or cpu, not $TORCH_FLAVOUR" >&2; exit 2 ;; \
    esac

COPY --from=build /dist /dist
RUN pip install "$(ls /dist/kdservice-*.whl)[flower]"

# never run as root; /data holds the database (SQLite), uploads, job outputs and
# checkpoints (a volume); the work folder is the user's home, not a copy of the source
RUN rm -rf /dist && useradd --create-home --uid 10001 kd && mkdir -p /data && chown kd:kd /data
USER kd
WORKDIR /home/kd
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
    CMD python -c "import httpx,os; httpx.get(f'http://127.0.0.1:{os.environ[\"KD_PORT\"]}/healthz', timeout=2).raise_for_status()" || exit 1

ENTRYPOINT ["kd"]
CMD ["serve"]
