#!/usr/bin/env bash
# Regenerate the protobuf / gRPC Python modules of fedkit's deployment protocol.
#
# Usage: scripts/gen_proto.sh            (from the repository root, with the dev extra installed)
# The generated fedkit_pb2.py / fedkit_pb2_grpc.py are committed; rerun this after editing
# src/fedkit/net/proto/fedkit.proto. Imports are rewritten to be package-relative.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
PROTO_DIR=src/fedkit/net/proto
"$PY" -m grpc_tools.protoc -I "$PROTO_DIR" \
  --python_out="$PROTO_DIR" --pyi_out="$PROTO_DIR" --grpc_python_out="$PROTO_DIR" \
  "$PROTO_DIR/fedkit.proto"
# grpc_tools emits "import fedkit_pb2 as ..."; make it relative to the package.
sed -i 's/^import fedkit_pb2 as /from . import fedkit_pb2 as /' "$PROTO_DIR/fedkit_pb2_grpc.py"
"$PY" -c "import fedkit.net.proto.fedkit_pb2_grpc as g; print('ok', g.__name__)"
