"""Triton implementations of pysteer's ops (installed as ``pysteer.triton_kernels``).

Each launcher has the name, argument order and semantics of its counterpart in
``pysteer.ops.reference``, which is the oracle the tests hold them to:

- ``sparse_steer_``  in-place edit of selected SAE features   (sparse_steer.py)
- ``dense_steer_``   in-place dense add / projection           (sparse_steer.py)
- ``encode_topk``    fused SAE encode + per-row top-k          (encode_topk.py)
- ``sparse_decode``  embedding-bag decode of (values, indices) (sparse_decode.py)

Launchers are plain: the op layer (``pysteer.ops``) validates every call, and its
registry (``pysteer.ops.backends``) sends here only what the kernels take (CUDA
tensors, or fp32/fp16 CPU tensors in the interpreter; encode_topk with k <= 256).
"""

from triton.runtime.interpreter import InterpretedFunction

from .encode_topk import encode_topk
from .sparse_decode import sparse_decode
from .sparse_steer import _sparse_steer_kernel, dense_steer_, sparse_steer_

__all__ = ["sparse_steer_", "dense_steer_", "encode_topk", "sparse_decode"]

#: Whether Triton interprets these kernels, which it decides when they are defined
#: (TRITON_INTERPRET=1 at import); only then do they run on CPU tensors.
INTERPRETED = isinstance(_sparse_steer_kernel, InterpretedFunction)
