"""Communication compression as aggregator stages: quantisation (QSGD, uniform b-bit), 1-bit
sign compression, top-k and random-k sparsification, and error feedback kept as client state.

Each compressor encodes an update on the client (``prepare``) into tensors that ARE the encoded
form — packed ``uint8`` codes, ``int32`` positions with their values, ``float32`` scales — so the
deployment codec sends the compressed bytes and the simulators count them as ``bytes_up``; the
server decodes (checked) before the inner stage folds the update. Stages compose:
``clip → topk → mean`` is ``{name = "clip", inner = {name = "topk", fraction = 0.01}}``.
See docs/compression.md.
"""

from fedkit.compress.codec import CompressError, Compressor, Packed, Sparse
from fedkit.compress.feedback import ErrorFeedback, FeedbackState, with_error_feedback
from fedkit.compress.quantize import QSGD, UniformQuantizer
from fedkit.compress.sign import SignCompressor
from fedkit.compress.sparsify import RandomK, TopK

__all__ = [
    "QSGD",
    "CompressError",
    "Compressor",
    "ErrorFeedback",
    "FeedbackState",
    "Packed",
    "RandomK",
    "SignCompressor",
    "Sparse",
    "TopK",
    "UniformQuantizer",
    "with_error_feedback",
]
