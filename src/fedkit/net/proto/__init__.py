"""Generated protobuf / gRPC code for fedkit's deployment protocol (see fedkit.proto).

Regenerate with ``scripts/gen_proto.sh``; do not edit the ``*_pb2*.py`` files by hand.
"""

PROTOCOL_VERSION = 1
"""The protocol version this fedkit speaks (``RegisterRequest.protocol_version``)."""
