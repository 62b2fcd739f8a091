#!/usr/bin/env bash
# Generate this worker's own copy of the protocol's Python modules from fedkit's fedkit.proto.
#
# Usage: examples/numpy_worker/gen_proto.sh   (needs grpcio-tools; from anywhere)
# The NumPy worker imports the copies beside it (fedkit_pb2.py, fedkit_pb2_grpc.py), not fedkit's
# package, so a machine without fedkit or PyTorch can run it. tests/unit/test_protocol_doc.py
# checks the copy describes the same protocol as src/fedkit/net/proto/fedkit.proto.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$HERE/../.."
PY="${PYTHON:-$ROOT/.venv/bin/python}"
"$PY" -m grpc_tools.protoc -I "$ROOT/src/fedkit/net/proto" \
  --python_out="$HERE" --grpc_python_out="$HERE" "$ROOT/src/fedkit/net/proto/fedkit.proto"
