"""Triton implementations of pysteer's ops (installed as ``pysteer.triton_kernels``).

Each launcher has the name, argument order and semantics of its counterpart in
``pysteer.ops.reference``, which is the oracle the tests hold them to:

- ``sparse_steer_``  in-place edit of selected SAE features   (sparse_steer.py)
- ``dense_steer_``   in-place dense add / projection           (sparse_steer.py)
- ``encode_topk``    fused SAE encode + per-row top-k          (encode_topk.py)
- ``sparse_decode``  embedding-bag decode of (values, indices) (sparse_decode.py)

Launchers check shapes minimally; the op layer validates inputs before calling them.
"""

from .encode_topk import encode_topk
from .sparse_decode import sparse_decode
from .sparse_steer import dense_steer_, sparse_steer_

__all__ = ["sparse_steer_", "dense_steer_", "encode_topk", "sparse_decode"]
