"""Generated protobuf / gRPC code for the vertical parties' service (see vertical.proto).

Regenerate with ``scripts/gen_vertical_proto.sh``; do not edit the ``*_pb2*.py`` files by hand.
"""
