"""The Triton kernels against the pure-PyTorch reference.

Without a GPU the kernels run on CPU tensors through the Triton interpreter (see
conftest.py), so shapes stay small and odd. Tolerances follow flash-attention: the
kernel's error against an fp32 oracle may be at most twice the error of the
reference computed in the same low dtype, plus a small floor. Rows with
row_index == -1 must come back bit-identical.
"""

import importlib

import pytest
import torch
from conftest import requires_cuda

from pysteer import triton_kernels
from pysteer.ops import reference
from pysteer.ops.modes import DenseEdit, FeatureEdit

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
steer_impl = importlib.import_module("pysteer.triton_kernels.sparse_steer")
topk_impl = importlib.import_module("pysteer.triton_kernels.encode_topk")

DTYPES = [
    torch.float32,
    torch.float16,
    pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="bf16 needs a GPU: the Triton interpreter mishandles it")),
]


def assert_close_fa(out, ref32, ref_low, floor=1e-5, what=""):
    """max|out - ref32| <= 2 * max|ref_low - ref32| + floor * (1 + max|ref32|)."""
    ref32 = ref32.float()
    err = (out.float() - ref32).abs().max().item() if out.numel() else 0.0
    base = (ref_low.float() - ref32).abs().max().item() if out.numel() else 0.0
    bound = 2 * base + floor * (1 + (ref32.abs().max().item() if out.numel() else 0.0))
    assert err <= bound, (f"{what}: kernel error {err:.3g} > bound {bound:.3g} "
                          f"(low-dtype reference error {base:.3g})")


def make_row_index(T, C, gen):
    """Random rows in [-1, C) with at least one steered and (T > 1) one untouched."""
    row_index = torch.randint(-1, C, (T,), generator=gen, dtype=torch.int32)
    row_index[0] = C - 1
    if T > 1:
        row_index[1] = -1
    return row_index.to(DEVICE)


def mixed_modes(n, n_modes, gen):
    return (torch.arange(n) % n_modes)[torch.randperm(n, generator=gen)].to(torch.int8).to(DEVICE)


def randn(*shape, gen, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(DEVICE)


def sparse_inputs(T, D, S, C, dtype, gen, with_acts=False):
    args = dict(
        row_index=make_row_index(T, C, gen),
        coeffs=randn(C, S, gen=gen, scale=2.0),
        enc_rows=randn(S, D, gen=gen, scale=D ** -0.5, dtype=dtype),
        enc_bias=randn(S, gen=gen, scale=0.2, dtype=dtype),
        # Mixed JumpReLU thresholds, a quarter of them plain ReLU (0).
        threshold=(torch.rand(S, generator=gen) * 0.6
                   * (torch.rand(S, generator=gen) > 0.25)).to(dtype).to(DEVICE),
        dec_rows=randn(S, D, gen=gen, scale=D ** -0.5, dtype=dtype),
        input_offset=randn(D, gen=gen, scale=0.3, dtype=dtype),
        edit_modes=mixed_modes(S, len(FeatureEdit), gen),
        feature_acts=torch.relu(randn(T, S, gen=gen)) if with_acts else None,
    )
    return randn(T, D, gen=gen, dtype=dtype), args


def check_steer(op_name, hidden, args):
    """Run the kernel and the reference (fp32 oracle and same-dtype) and compare."""
    kernel_out = hidden.clone()
    getattr(triton_kernels, op_name)(kernel_out, **args)
    ref_low = hidden.clone()
    getattr(reference, op_name)(ref_low, **args)
    ref32 = hidden.to(torch.float32, copy=True)
    getattr(reference, op_name)(ref32, **args)
    untouched = args["row_index"] < 0
    assert torch.equal(kernel_out[untouched], hidden[untouched]), "untouched rows changed"
    assert not torch.equal(kernel_out[~untouched], hidden[~untouched]), "steered rows unchanged"
    assert_close_fa(kernel_out, ref32, ref_low, what=op_name)


@pytest.fixture(params=["one_pass", "two_pass"])
def steer_path(request, monkeypatch):
    """Rows kept in registers (D <= MAX_SINGLE_PASS_D), or the two-pass loop over D."""
    if request.param == "two_pass":
        monkeypatch.setattr(steer_impl, "MAX_SINGLE_PASS_D", 16)
    return request.param


def test_exports():
    assert set(triton_kernels.__all__) == {"sparse_steer_", "dense_steer_", "encode_topk", "sparse_decode"}
    for name in triton_kernels.__all__:
        assert callable(getattr(triton_kernels, name))


# ---------------------------------------------------------------- sparse / dense steer

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S", [3, 30])
@pytest.mark.parametrize("D", [40, 111])
@pytest.mark.parametrize("T", [1, 7, 33])
def test_sparse_steer(T, D, S, dtype, steer_path):
    gen = torch.Generator().manual_seed(T * 1000 + D * 10 + S)
    hidden, args = sparse_inputs(T, D, S, C=3, dtype=dtype, gen=gen)
    check_steer("sparse_steer_", hidden, args)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,D,S", [(7, 111, 30), (33, 40, 3)])
def test_sparse_steer_feature_acts(T, D, S, dtype, steer_path):
    gen = torch.Generator().manual_seed(7)
    hidden, args = sparse_inputs(T, D, S, C=2, dtype=dtype, gen=gen, with_acts=True)
    check_steer("sparse_steer_", hidden, args)


@pytest.mark.parametrize("mode", list(FeatureEdit))
def test_sparse_steer_single_mode(mode):
    gen = torch.Generator().manual_seed(int(mode))
    hidden, args = sparse_inputs(7, 40, 5, C=1, dtype=torch.float32, gen=gen)
    args["edit_modes"] = torch.full((5,), int(mode), dtype=torch.int8, device=DEVICE)
    args["threshold"] = torch.zeros(5, device=DEVICE)  # keep most features active
    check_steer("sparse_steer_", hidden, args)


def test_sparse_steer_strided_hidden(steer_path):
    """A row-strided view is steered in place; the columns around it are not touched."""
    gen = torch.Generator().manual_seed(3)
    hidden, args = sparse_inputs(7, 40, 30, C=3, dtype=torch.float16, gen=gen)
    storage = randn(7, 53, gen=gen, dtype=torch.float16)
    view = storage[:, 5:45]
    view.copy_(hidden)
    before = storage.clone()
    triton_kernels.sparse_steer_(view, **args)
    expected = hidden.clone()
    reference.sparse_steer_(expected, **args)
    assert torch.equal(storage[:, :5], before[:, :5]) and torch.equal(storage[:, 45:], before[:, 45:])
    ref32 = hidden.to(torch.float32, copy=True)
    reference.sparse_steer_(ref32, **args)
    assert_close_fa(view, ref32, expected, what="strided")


def test_sparse_steer_all_untouched():
    gen = torch.Generator().manual_seed(5)
    hidden, args = sparse_inputs(33, 111, 30, C=3, dtype=torch.float16, gen=gen)
    args["row_index"] = torch.full((33,), -1, dtype=torch.int32, device=DEVICE)
    out = hidden.clone()
    triton_kernels.sparse_steer_(out, **args)
    assert torch.equal(out, hidden)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [40, 111])
@pytest.mark.parametrize("T", [1, 7, 33])
def test_dense_steer(T, D, dtype, steer_path):
    gen = torch.Generator().manual_seed(T * 100 + D)
    K, C = 5, 3
    directions = torch.nn.functional.normalize(torch.randn(K, D, generator=gen), dim=1)
    args = dict(row_index=make_row_index(T, C, gen), coeffs=randn(C, K, gen=gen, scale=2.0),
                directions=directions.to(dtype).to(DEVICE),
                dense_modes=mixed_modes(K, len(DenseEdit), gen))
    check_steer("dense_steer_", randn(T, D, gen=gen, dtype=dtype), args)


# ---------------------------------------------------------------- encode + top-k

@pytest.fixture(params=["one_chunk", "many_chunks"])
def topk_chunking(request, monkeypatch):
    """Small F tiles, folded either all in one program or one chunk per tile + merge."""
    monkeypatch.setattr(topk_impl, "BLOCK_F", 64)
    monkeypatch.setattr(topk_impl, "TARGET_PROGRAMS", 1 if request.param == "one_chunk" else 10 ** 6)
    return request.param


def check_topk(x, w_enc, b_enc, input_offset, feature_scale, k, floor=1e-5):
    values, indices = triton_kernels.encode_topk(x, w_enc, b_enc, input_offset, feature_scale, k)
    T, F = x.shape[0], w_enc.shape[1]
    assert values.shape == (T, k) and values.dtype == torch.float32
    assert indices.shape == (T, k) and indices.dtype == torch.int64
    offset = input_offset if input_offset is not None else torch.zeros_like(x[0])
    pre32 = (x.float() - offset.float()) @ w_enc.float() + b_enc.float()
    pre_low = (x - offset) @ w_enc + b_enc
    if feature_scale is not None:
        pre32 = pre32 * feature_scale.float()
        pre_low = pre_low * feature_scale.to(pre_low.dtype)
    ref_values = pre32.topk(k, dim=1).values
    low_values = pre_low.float().topk(k, dim=1).values
    bound = 2 * (low_values - ref_values).abs().max().item() + floor * (1 + ref_values.abs().max().item())
    # Values as sets (sorted), then indices through the values they point at: ties exist.
    assert torch.all(values[:, :-1] >= values[:, 1:]), "values not sorted descending"
    assert (values - ref_values).abs().max().item() <= bound, "top-k values"
    assert int(indices.min()) >= 0 and int(indices.max()) < F
    assert all(len(set(row.tolist())) == k for row in indices.cpu()), "duplicate indices"
    assert (values - pre32.gather(1, indices)).abs().max().item() <= bound, "pre-activations at the indices"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("F,k", [(97, 1), (97, 16), (300, 5), (300, 16)])
@pytest.mark.parametrize("T", [1, 7, 33])
def test_encode_topk(T, F, k, dtype, topk_chunking):
    gen = torch.Generator().manual_seed(T * 1000 + F + k)
    D = 40 if F == 97 else 111
    x = randn(T, D, gen=gen, dtype=dtype)
    w_enc = randn(D, F, gen=gen, scale=D ** -0.5, dtype=dtype)
    b_enc = randn(F, gen=gen, scale=0.2, dtype=dtype)
    offset = randn(D, gen=gen, scale=0.3, dtype=dtype)
    scale = (torch.rand(F, generator=gen) + 0.5).to(DEVICE) if k != 5 else None
    check_topk(x, w_enc, b_enc, offset, scale, k)


def test_encode_topk_default_tiles():
    """Default tile sizes: one 128-wide tile covers F=97, the other shape has 3."""
    gen = torch.Generator().manual_seed(11)
    for T, D, F, k in [(7, 40, 97, 16), (33, 111, 300, 5)]:
        x = randn(T, D, gen=gen)
        check_topk(x, randn(D, F, gen=gen, scale=D ** -0.5), randn(F, gen=gen), randn(D, gen=gen), None, k)


def test_encode_topk_no_offset_and_ties(topk_chunking):
    """input_offset=None means no offset; exact ties (duplicated columns) still give k distinct indices."""
    gen = torch.Generator().manual_seed(13)
    D, F, k = 40, 97, 16
    w_enc = randn(D, F, gen=gen, scale=D ** -0.5, dtype=torch.float16)
    w_enc[:, 50:] = w_enc[:, :47]
    b_enc = torch.zeros(F, dtype=torch.float16, device=DEVICE)
    check_topk(randn(7, D, gen=gen, dtype=torch.float16), w_enc, b_enc, None, None, k)


@pytest.mark.parametrize("w_dtype,offset_dtype", [(torch.float32, torch.float32),
                                                   (torch.float16, torch.float32)])
def test_encode_topk_mixed_dtypes(w_dtype, offset_dtype):
    """fp16 x with fp32 weights (fp32 GEMM), and an fp32 offset beside fp16 weights."""
    gen = torch.Generator().manual_seed(43)
    T, D, F, k = 7, 111, 97, 5
    x = randn(T, D, gen=gen, dtype=torch.float16)
    w_enc = randn(D, F, gen=gen, scale=D ** -0.5, dtype=w_dtype)
    b_enc = randn(F, gen=gen, dtype=w_dtype)
    offset = randn(D, gen=gen, scale=0.3, dtype=offset_dtype)
    values, indices = triton_kernels.encode_topk(x, w_enc, b_enc, offset, None, k)
    pre32 = (x.float() - offset.float()) @ w_enc.float() + b_enc.float()
    ref_values = pre32.topk(k, dim=1).values
    assert_close_fa(values, ref_values, ref_values, what="top-k values")
    assert_close_fa(values, pre32.gather(1, indices), pre32.gather(1, indices), what="top-k indices")


@pytest.mark.parametrize("chunks", [1, 10 ** 6])
def test_encode_topk_bitonic(monkeypatch, chunks):
    """The GPU's bitonic tl.topk path, forced on (slow under the interpreter: tiny shape)."""
    monkeypatch.setattr(topk_impl, "USE_BITONIC", True)
    monkeypatch.setattr(topk_impl, "BLOCK_F", 32)
    monkeypatch.setattr(topk_impl, "TARGET_PROGRAMS", chunks)
    gen = torch.Generator().manual_seed(17)
    D, F, k = 40, 97, 5
    x = randn(3, D, gen=gen, dtype=torch.float16)
    check_topk(x, randn(D, F, gen=gen, scale=D ** -0.5, dtype=torch.float16),
               randn(F, gen=gen, dtype=torch.float16), randn(D, gen=gen, dtype=torch.float16),
               (torch.rand(F, generator=gen) + 0.5).to(DEVICE), k)


# ---------------------------------------------------------------- sparse decode

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extras", ["none", "bias", "residual", "both"])
@pytest.mark.parametrize("T,D,k", [(1, 40, 1), (7, 111, 5), (33, 40, 16)])
def test_sparse_decode(T, D, k, extras, dtype):
    gen = torch.Generator().manual_seed(T * 100 + k)
    F = 97
    values = randn(T, k, gen=gen)
    indices = torch.randint(0, F, (T, k), generator=gen)
    indices[torch.rand(T, k, generator=gen) < 0.3] = -1
    values[indices.to(DEVICE) < 0] = float("nan")  # must be ignored, as in the reference
    indices = indices.to(torch.int32 if T == 7 else torch.int64).to(DEVICE)
    w_dec = randn(F, D, gen=gen, dtype=dtype)
    bias = randn(D, gen=gen, dtype=dtype) if extras in ("bias", "both") else None
    residual = randn(T, D, gen=gen, dtype=dtype) if extras in ("residual", "both") else None

    out = triton_kernels.sparse_decode(values, indices, w_dec, bias, residual)
    ref_low = reference.sparse_decode(values, indices, w_dec, bias, residual)
    assert out.shape == (T, D) and out.dtype == ref_low.dtype
    ref32 = reference.sparse_decode(values, indices, w_dec.float(), None if bias is None else bias.float(),
                                    None if residual is None else residual.float())
    assert_close_fa(out, ref32, ref_low, what="sparse_decode")


def test_sparse_decode_all_skipped():
    gen = torch.Generator().manual_seed(19)
    residual = randn(7, 111, gen=gen, dtype=torch.float16)
    out = triton_kernels.sparse_decode(randn(7, 5, gen=gen), torch.full((7, 5), -1, device=DEVICE),
                                       randn(97, 111, gen=gen, dtype=torch.float16), None, residual)
    assert torch.equal(out, residual)


# ---------------------------------------------------------------- real shapes (GPU)

@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sparse_steer_real_shape(dtype):
    gen = torch.Generator().manual_seed(23)
    hidden, args = sparse_inputs(512, 4096, 30, C=8, dtype=dtype, gen=gen)
    check_steer("sparse_steer_", hidden, args)
    hidden, args = sparse_inputs(512, 4096, 30, C=8, dtype=dtype, gen=gen, with_acts=True)
    check_steer("sparse_steer_", hidden, args)


@requires_cuda
def test_sparse_steer_wide_rows_real_shape():
    """D above MAX_SINGLE_PASS_D takes the two-pass path."""
    gen = torch.Generator().manual_seed(29)
    hidden, args = sparse_inputs(64, 16384, 64, C=4, dtype=torch.bfloat16, gen=gen)
    check_steer("sparse_steer_", hidden, args)


@requires_cuda
def test_dense_steer_real_shape():
    gen = torch.Generator().manual_seed(31)
    K, C, D = 4, 8, 4096
    directions = torch.nn.functional.normalize(torch.randn(K, D, generator=gen), dim=1)
    args = dict(row_index=make_row_index(512, C, gen), coeffs=randn(C, K, gen=gen, scale=4.0),
                directions=directions.to(torch.bfloat16).to(DEVICE),
                dense_modes=mixed_modes(K, len(DenseEdit), gen))
    check_steer("dense_steer_", randn(512, D, gen=gen, dtype=torch.bfloat16), args)


@requires_cuda
@pytest.mark.parametrize("T", [1, 512])
def test_encode_topk_real_shape(T):
    gen = torch.Generator().manual_seed(37)
    D, F, k = 4096, 16384, 64
    x = randn(T, D, gen=gen, dtype=torch.bfloat16)
    check_topk(x, randn(D, F, gen=gen, scale=D ** -0.5, dtype=torch.bfloat16),
               randn(F, gen=gen, scale=0.2, dtype=torch.bfloat16),
               randn(D, gen=gen, scale=0.3, dtype=torch.bfloat16), None, k)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_encode_topk_widest_k(dtype):
    """k = 256, the largest supported: 256-wide tiles."""
    gen = torch.Generator().manual_seed(47)
    D, F = 256, 3000
    check_topk(randn(40, D, gen=gen, dtype=dtype), randn(D, F, gen=gen, scale=D ** -0.5, dtype=dtype),
               randn(F, gen=gen, dtype=dtype), randn(D, gen=gen, dtype=dtype),
               (torch.rand(F, generator=gen) + 0.5).to(DEVICE), 256)


@requires_cuda
def test_sparse_decode_real_shape():
    gen = torch.Generator().manual_seed(41)
    T, k, F, D = 512, 64, 16384, 4096
    values = torch.relu(randn(T, k, gen=gen))
    indices = torch.randint(0, F, (T, k), generator=gen).to(DEVICE)
    w_dec = randn(F, D, gen=gen, scale=0.05, dtype=torch.bfloat16)
    bias = randn(D, gen=gen, dtype=torch.bfloat16)
    residual = randn(T, D, gen=gen, dtype=torch.bfloat16)
    out = triton_kernels.sparse_decode(values, indices, w_dec, bias, residual)
    ref32 = reference.sparse_decode(values, indices, w_dec.float(), bias.float(), residual.float())
    assert_close_fa(out, ref32, reference.sparse_decode(values, indices, w_dec, bias, residual),
                    what="sparse_decode")
