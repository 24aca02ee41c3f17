"""Top-k over packed (value, index) keys, shared by the encode and merge kernels.

``tl.topk`` returns values only, so each fp32 value and its column index are packed
into one int64 whose signed order is the value's order (ties: larger index first):

    key = ordered_bits(value) << 32 | index

``ordered_bits`` flips the magnitude bits of negative floats, which makes the int32
order equal the float order (-0.0 sorts just below +0.0; a NaN without sign bit
above +inf, as in ``torch.topk``). Index must fit in 31 bits. Real keys are unique
(one per column), so extracting a maximum removes exactly one element.

Two equivalent ways to keep a top-k, picked by the constexpr ``BITONIC``: Triton's
bitonic ``tl.topk`` (the GPU path), and K rounds of max-extraction, which uses only
plain reductions, because the interpreter runs the bitonic network's ``xor_sum``
element by element (seconds per tile).
"""

import triton
import triton.language as tl


@triton.jit
def pack_keys(values, cols):
    bits = values.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (ordered.to(tl.int64) << 32) | cols.to(tl.int64)


@triton.jit
def unpack_keys(keys):
    """(values fp32, column indices int64) of packed keys."""
    ordered = (keys >> 32).to(tl.int32)
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    # Truncating to int32 keeps the low word, the index (< 2**31, so non-negative).
    return bits.to(tl.float32, bitcast=True), keys.to(tl.int32).to(tl.int64)


@triton.jit
def empty_keys(BLOCK_R: tl.constexpr, K_POW2: tl.constexpr):
    """A running top-k that any finite value beats: (-inf, column 0) everywhere."""
    return pack_keys(tl.full([BLOCK_R, K_POW2], float("-inf"), tl.float32),
                     tl.zeros([BLOCK_R, K_POW2], tl.int32))


@triton.jit
def _extract_topk(running, keys, K_POW2: tl.constexpr):
    floor = tl.min(running, axis=1)[:, None]
    slot = tl.arange(0, K_POW2)[None, :]
    merged = running
    for j in tl.static_range(K_POW2):
        best = tl.maximum(tl.max(running, axis=1), tl.max(keys, axis=1))[:, None]
        merged = tl.where(slot == j, best, merged)
        # Knock the winner out; the running floor can never win again.
        running = tl.where(running == best, floor, running)
        keys = tl.where(keys == best, floor, keys)
    return merged


@triton.jit
def merge_topk(running, keys, K_POW2: tl.constexpr, BITONIC: tl.constexpr):
    """Top-K_POW2 of ``running`` [R, K_POW2] (sorted descending) and ``keys`` [R, N].

    Tiles that cannot change the running top-k (the common case once it has filled)
    cost one compare and one reduction instead of a sort.
    """
    bar = tl.min(running, axis=1)
    n_better = tl.sum((keys > bar[:, None]).to(tl.int32))
    if n_better > 0:
        if BITONIC:
            top = tl.topk(keys, K_POW2)
            # Descending against ascending: the elementwise max holds the top K_POW2
            # of the union as a bitonic sequence, so one bitonic merge sorts it.
            running = tl.bitonic_merge(tl.maximum(running, tl.flip(top, 1)), descending=True)
        else:
            running = _extract_topk(running, keys, K_POW2)
    return running
