#!/usr/bin/env bash
# Regenerate the protobuf / gRPC Python modules of the vertical-FL parties' service.
#
# Usage: scripts/gen_vertical_proto.sh   (from the repository root, with the dev extra installed)
# The generated vertical_pb2.py / vertical_pb2_grpc.py are committed; rerun this after editing
# src/fedkit/vertical/proto/vertical.proto. Imports are rewritten to be package-relative.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
PROTO_DIR=src/fedkit/vertical/proto
"$PY" -m grpc_tools.protoc -I "$PROTO_DIR" \
  --python_out="$PROTO_DIR" --pyi_out="$PROTO_DIR" --grpc_python_out="$PROTO_DIR" \
  "$PROTO_DIR/vertical.proto"
sed -i 's/^import vertical_pb2 as /from . import vertical_pb2 as /' "$PROTO_DIR/vertical_pb2_grpc.py"
"$PY" -c "import fedkit.vertical.proto.vertical_pb2_grpc as g; print('ok', g.__name__)"
