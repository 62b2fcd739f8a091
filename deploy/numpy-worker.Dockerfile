# syntax=docker/dockerfile:1
# The NumPy worker of examples/numpy_worker: a fedkit worker without PyTorch or fedkit
# (docs/protocol.md). Build from the repository root:
#
#   docker build -f deploy/numpy-worker.Dockerfile -t fedkit-numpy-worker:0.1.0 .
#   docker run --rm fedkit-numpy-worker:0.1.0 --coordinator HOST:7070 --experiment /config/exp.toml \
#       --client-id 2 --data /data/client-2.safetensors --lr 0.05 --local-steps 5
#
# Versions are the ones the conformance test ran with (tests/integration/test_protocol_conformance.py).
FROM python:3.11.7-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install "numpy==2.4.6" "grpcio==1.85.3" "protobuf==7.36.2" "safetensors==0.8.0"
WORKDIR /opt/numpy_worker
COPY examples/numpy_worker/*.py ./
RUN useradd --create-home --uid 10001 fedkit
USER fedkit
ENTRYPOINT ["python", "/opt/numpy_worker/worker.py"]
CMD ["--help"]
