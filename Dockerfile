# The Grove image: one image for every service (python -m kvstore | prefill_worker | decode_worker | gateway).
# CPU PyTorch by default; the CUDA build with --build-arg TORCH_VARIANT=cu128 (compose/docker-compose.gpu.yml).
# No model inside: mount a Hugging Face model directory (compose mounts one at /models/model).
FROM python:3.11-slim-bookworm

# cpu | cu126 | cu128 ...: the PyTorch wheel index torch==2.13.0 is installed from
ARG TORCH_VARIANT=cpu
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONPATH=/app GROVE_CACHE=/home/grove/.cache/grove
WORKDIR /app

# g++ builds the CPU attention kernel (kernels/cpu_attention.cpp) for the host it runs on, at first use
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
# torch first and pinned exactly, from its own index (PyPI's Linux wheel is the CUDA build)
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" torch==2.13.0
COPY requirements.txt ./
RUN pip install torch==2.13.0 -r requirements.txt

COPY . .
# gRPC stubs are generated, never committed; `--help` proves every service imports
RUN python scripts/gen_protos.py \
    && for m in kvstore prefill_worker decode_worker gateway runtime.healthcheck; do python -m $m --help > /dev/null; done \
    && useradd --create-home --uid 10001 grove
USER grove
EXPOSE 8000 50051
CMD ["python", "-m", "gateway", "--help"]
