"""The compiled CUDA extension ``pysteer._C`` against the pure-PyTorch reference.

Without a GPU only the build, the ABI constants and the argument checks run; every
kernel comparison needs a CUDA GPU and skips with that reason. Tolerances follow
flash-attention: a kernel's max error against an fp32 oracle may be at most about
twice the error of the reference run in the same dtype, plus a small floor.
"""

from __future__ import annotations

import inspect
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import requires_cuda
from pysteer.ops import reference as ref
from pysteer.ops.modes import DenseEdit, FeatureEdit

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Absolute error floor per dtype, relative to the scale of the compared values.
FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _load_extension():
    try:
        from pysteer import _C
        return _C, None
    except ImportError as exc:
        return None, exc


_C, _IMPORT_ERROR = _load_extension()
requires_ext = pytest.mark.skipif(_C is None, reason=f"pysteer._C is not built ({_IMPORT_ERROR})")


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").is_file():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


# --------------------------------------------------------------------------- build


def test_extension_built(record_property):
    """With nvcc present and the build not skipped, the install must have built _C."""
    record_property("cuda_extension_loaded", _C is not None)
    print(f"pysteer._C loaded: {_C is not None}"
          + (f" ({_C.__file__}, CUDA runtime {_C.CUDART_VERSION})" if _C else f" ({_IMPORT_ERROR})"))
    nvcc = _nvcc()
    skipped = os.environ.get("PYSTEER_SKIP_CUDA_BUILD", "").strip().lower() in ("1", "true", "yes", "on")
    if _C is not None:
        return
    if nvcc and not skipped:
        pytest.fail(f"nvcc is at {nvcc} and PYSTEER_SKIP_CUDA_BUILD is unset, but pysteer._C "
                    f"does not import: {_IMPORT_ERROR}. Rebuild with `pip install -e .`.")
    pytest.skip("no CUDA toolchain (nvcc) found" if not nvcc else "PYSTEER_SKIP_CUDA_BUILD is set")


@requires_ext
def test_abi_codes_match_python():
    assert _C.FEATURE_EDIT == {m.name: int(m) for m in FeatureEdit}
    assert _C.DENSE_EDIT == {m.name: int(m) for m in DenseEdit}
    from pysteer.ops import cuda_backend as cb
    assert _C.DTYPE == {str(dt).removeprefix("torch."): code for dt, code in cb.DTYPE_CODES.items()}


@requires_ext
def test_backend_signatures_match_reference():
    from pysteer.ops import cuda_backend as cb
    for name in ("sparse_steer_", "dense_steer_", "encode_topk", "sparse_decode"):
        assert inspect.signature(getattr(cb, name)) == inspect.signature(getattr(ref, name)), name


@requires_ext
def test_bindings_reject_bad_sizes():
    with pytest.raises(ValueError, match="k must be in"):
        _C.encode_topk_workspace_bytes(4, 64, 1000, 300, 2)
    with pytest.raises(ValueError, match="exceeds the number of features"):
        _C.encode_topk_workspace_bytes(4, 64, 10, 11, 2)
    with pytest.raises(ValueError, match="dtype code"):
        _C.sparse_steer(hidden=1, row_index=1, coeffs=1, n_configs=1, enc_rows=1, enc_bias=0,
                        enc_bias_dtype=0, threshold=0, threshold_dtype=0, dec_rows=1, input_offset=0,
                        input_offset_dtype=0, edit_modes=1, feature_acts=0, T=2, D=64, S=3,
                        hidden_dtype=7, weight_dtype=0, stream=0)
    with pytest.raises(ValueError, match="D must be"):
        _C.dense_steer(hidden=1, row_index=1, coeffs=1, n_configs=1, directions=1, dense_modes=1,
                       T=2, D=0, K=3, hidden_dtype=0, weight_dtype=0, stream=0)
    with pytest.raises(ValueError, match="workspace has"):
        _C.encode_topk(x=1, w_enc=1, b_enc=0, b_enc_dtype=0, input_offset=0, input_offset_dtype=0,
                       feature_scale=0, feature_scale_dtype=0, values=1, indices=1, workspace=256,
                       workspace_bytes=10, T=64, D=1000, F=8, k=1, x_dtype=0, weight_dtype=0, stream=0)


@requires_ext
def test_topk_plan_is_shape_only_and_bounded():
    for T, D, F, k in [(1, 4096, 131072, 64), (512, 2304, 16384, 64), (3, 111, 1000, 256), (7, 8, 128, 1)]:
        plan = _C.encode_topk_plan(T, D, F, k, 2)
        assert plan == _C.encode_topk_plan(T, D, F, k, 2)
        assert plan["workspace_bytes"] == _C.encode_topk_workspace_bytes(T, D, F, k, 2)
        assert plan["n_slices"] * plan["tiles_per_slice"] * 128 >= F
        assert plan["n_slices"] * max(32, k) <= 32768  # the merge holds a row in shared memory
        assert plan["gemm_smem_bytes"] <= 160 * 1024  # fits an A100 (sm_80) opt-in


@requires_ext
def test_launch_without_gpu_raises_readable_error():
    if torch.cuda.is_available() or _C.device_count() > 0:
        pytest.skip("a GPU is present; fake pointers would corrupt its context")
    with pytest.raises(RuntimeError, match="CUDA error"):
        _C.sparse_decode(values=256, indices=256, w_dec=256, bias=0, bias_dtype=0, residual=0, out=256,
                         T=1, k=4, F=10, D=64, weight_dtype=2, out_dtype=2, stream=0)


# --------------------------------------------------------------------------- GPU helpers


@pytest.fixture(autouse=True)
def _exact_fp32_matmul():
    """fp32 oracles must not silently run in TF32 because another test enabled it."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(previous)


def _cb():
    if _C is None:
        pytest.skip(f"pysteer._C is not built ({_IMPORT_ERROR})")
    from pysteer.ops import cuda_backend
    return cuda_backend


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(seed)


def _randn(*shape, dtype=torch.float32, gen=None, scale=1.0):
    return (torch.randn(*shape, device="cuda", generator=gen) * scale).to(dtype)


def _assert_close_to_oracle(name, got, same_dtype_ref, oracle, dtype, scale=None):
    """max|got - oracle| <= 2 * max|same-dtype reference - oracle| + floor."""
    got, same_dtype_ref, oracle = got.float(), same_dtype_ref.float(), oracle.float()
    if scale is None:
        scale = oracle.abs().max().item() or 1.0
    err = (got - oracle).abs().max().item()
    ref_err = (same_dtype_ref - oracle).abs().max().item()
    bound = 2 * ref_err + FLOOR[dtype] * scale
    assert err <= bound, f"{name}: kernel error {err:.3g} > bound {bound:.3g} (reference error {ref_err:.3g})"


def _row_index(T: int, C: int, gen) -> torch.Tensor:
    rows = torch.randint(-1, C, (T,), device="cuda", generator=gen, dtype=torch.int32)
    rows[0] = -1 if T > 1 else rows[0]  # always some untouched row when T > 1
    if T > 2:
        rows[1] = C - 1
    return rows


def _sparse_inputs(T, D, S, C, dtype, seed, weight_dtype=None):
    g = _gen(seed)
    wd = weight_dtype or dtype
    hidden = _randn(T, D, dtype=dtype, gen=g)
    enc = _randn(S, D, dtype=wd, gen=g, scale=D ** -0.5)
    dec = _randn(S, D, dtype=wd, gen=g, scale=0.5)
    enc_bias = _randn(S, dtype=wd, gen=g, scale=0.3)
    threshold = torch.rand(S, device="cuda", generator=g) * 0.3
    threshold[::3] = 0.0  # plain ReLU features too
    offset = _randn(D, dtype=wd, gen=g, scale=0.1)
    modes = (torch.arange(S, device="cuda") % 4).to(torch.int8)  # add, set, scale, ablate
    coeffs = _randn(C, S, gen=g, scale=2.0)
    rows = _row_index(T, C, g)
    return hidden, rows, coeffs, enc, enc_bias, threshold, dec, offset, modes


def _upcast(*ts):
    return [None if t is None else (t.float() if t.is_floating_point() else t) for t in ts]


# --------------------------------------------------------------------------- sparse / dense steer

STEER_SHAPES = [(1, 4096, 30), (8, 4096, 30), (512, 4096, 30), (5, 111, 7), (130, 136, 3), (3, 24, 1)]


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T,D,S", STEER_SHAPES)
@pytest.mark.parametrize("with_acts", [False, True], ids=["encode", "feature_acts"])
def test_sparse_steer_matches_reference(T, D, S, dtype, with_acts):
    cb = _cb()
    hidden, rows, coeffs, enc, enc_bias, threshold, dec, offset, modes = _sparse_inputs(T, D, S, 3, dtype, T + D + S)
    acts = None
    if with_acts:
        acts = torch.relu(_randn(T, S, gen=_gen(7)))
    oracle = hidden.float().clone()
    ref.sparse_steer_(oracle, rows, coeffs, *_upcast(enc, enc_bias, threshold, dec, offset), modes, acts)
    same = hidden.clone()
    ref.sparse_steer_(same, rows, coeffs, enc, enc_bias, threshold, dec, offset, modes, acts)
    got = hidden.clone()
    cb.sparse_steer_(got, rows, coeffs, enc, enc_bias, threshold, dec, offset, modes, acts)
    torch.cuda.synchronize()
    untouched = rows < 0
    assert torch.equal(got[untouched], hidden[untouched]), "rows with row_index -1 must be left bit-identical"
    _assert_close_to_oracle("sparse_steer_", got, same, oracle, dtype)


@requires_cuda
@pytest.mark.parametrize("mode", list(FeatureEdit), ids=lambda m: m.name)
def test_sparse_steer_each_mode(mode):
    cb = _cb()
    hidden, rows, coeffs, enc, enc_bias, threshold, dec, offset, _ = _sparse_inputs(9, 256, 5, 2, torch.float32, 3)
    modes = torch.full((5,), int(mode), dtype=torch.int8, device="cuda")
    expected = hidden.clone()
    ref.sparse_steer_(expected, rows, coeffs, enc, enc_bias, threshold, dec, offset, modes)
    got = hidden.clone()
    cb.sparse_steer_(got, rows, coeffs, enc, enc_bias, threshold, dec, offset, modes)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@requires_cuda
def test_sparse_steer_mixed_weight_dtype():
    """bf16 hidden with fp32 SAE rows and fp32 small vectors."""
    cb = _cb()
    hidden, rows, coeffs, enc, enc_bias, threshold, dec, offset, modes = _sparse_inputs(
        8, 512, 6, 2, torch.bfloat16, 11, weight_dtype=torch.float32)
    oracle = hidden.float().clone()
    ref.sparse_steer_(oracle, rows, coeffs, enc, enc_bias, threshold, dec, offset, modes)
    same = hidden.clone()
    ref.sparse_steer_(same, rows, coeffs, enc, enc_bias, threshold, dec, offset, modes)
    got = hidden.clone()
    cb.sparse_steer_(got, rows, coeffs, enc, enc_bias, threshold, dec, offset, modes)
    _assert_close_to_oracle("sparse_steer_ mixed", got, same, oracle, torch.bfloat16)


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T,D,K", [(1, 4096, 2), (8, 4096, 3), (512, 4096, 2), (5, 111, 3), (130, 136, 1)])
def test_dense_steer_matches_reference(T, D, K, dtype):
    cb = _cb()
    g = _gen(T * 31 + D)
    hidden = _randn(T, D, dtype=dtype, gen=g)
    u = torch.nn.functional.normalize(_randn(K, D, gen=g), dim=-1).to(dtype)
    modes = (torch.arange(K, device="cuda") % 2).to(torch.int8)  # add, project
    coeffs = _randn(4, K, gen=g, scale=3.0)
    rows = _row_index(T, 4, g)
    oracle = hidden.float().clone()
    ref.dense_steer_(oracle, rows, coeffs, u.float(), modes)
    same = hidden.clone()
    ref.dense_steer_(same, rows, coeffs, u, modes)
    got = hidden.clone()
    cb.dense_steer_(got, rows, coeffs, u, modes)
    torch.cuda.synchronize()
    untouched = rows < 0
    assert torch.equal(got[untouched], hidden[untouched])
    _assert_close_to_oracle("dense_steer_", got, same, oracle, dtype)


# --------------------------------------------------------------------------- encode + top-k

TOPK_SHAPES = [(1, 2304, 16384, 64), (8, 2304, 16384, 64), (512, 2304, 16384, 64),
               (5, 111, 1000, 37), (20, 64, 300, 256), (3, 40, 129, 1), (70, 96, 4096, 128)]


def _topk_inputs(T, D, F, dtype, seed, scaled):
    g = _gen(seed)
    x = _randn(T, D, dtype=dtype, gen=g)
    w = _randn(D, F, dtype=dtype, gen=g, scale=D ** -0.5)
    b = _randn(F, dtype=dtype, gen=g, scale=0.2)
    off = _randn(D, dtype=dtype, gen=g, scale=0.1)
    scale = torch.rand(F, device="cuda", generator=g) + 0.5 if scaled else None
    return x, w, b, off, scale


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T,D,F,k", TOPK_SHAPES)
@pytest.mark.parametrize("scaled", [False, True], ids=["noscale", "scale"])
def test_encode_topk_matches_reference(T, D, F, k, dtype, scaled):
    cb = _cb()
    x, w, b, off, scale = _topk_inputs(T, D, F, dtype, T + F + k, scaled)
    pre = (x.double() - off.double()) @ w.double() + b.double()  # float64 oracle
    if scale is not None:
        pre = pre * scale.double()
    oracle_v, _ = torch.topk(pre, k, dim=-1, sorted=True)
    # The same math in the inputs' dtype (what plain PyTorch would do).
    same = (x - off) @ w + b
    if scale is not None:
        same = same * scale.to(dtype)
    same_v, _ = torch.topk(same.float(), k, dim=-1, sorted=True)

    values, indices = cb.encode_topk(x, w, b, off, scale, k)
    torch.cuda.synchronize()
    assert values.shape == (T, k) and values.dtype == torch.float32
    assert indices.shape == (T, k) and indices.dtype == torch.int64
    assert bool((values[:, :-1] >= values[:, 1:]).all()), "values must be sorted descending"
    assert bool((indices >= 0).all() and (indices < F).all())
    assert all(len(set(r)) == k for r in indices.tolist()), "indices must be distinct per row"
    # Value sets: sorted values match the oracle's (ties in bf16 may swap indices).
    _assert_close_to_oracle("encode_topk values", values, same_v, oracle_v, dtype)
    # Each index carries its own pre-activation.
    carried = pre.gather(1, indices)
    ref_err = (same_v.double() - oracle_v).abs().max().item()
    idx_err = (values.double() - carried).abs().max().item()
    bound = 2 * ref_err + FLOOR[dtype] * (oracle_v.abs().max().item() or 1.0)
    assert idx_err <= bound, f"encode_topk: value vs its index's pre-activation {idx_err:.3g} > {bound:.3g}"
    # Reference op agrees with the oracle (sanity of the test itself).
    ref_v, _ = ref.encode_topk(x, w, b, off, scale, k)
    torch.testing.assert_close(ref_v.double(), oracle_v, rtol=1e-5, atol=1e-5)


@requires_cuda
def test_encode_topk_large_k_falls_back():
    """k above the kernel's 256: the op layer's registry hands the call to the reference."""
    _cb()
    from pysteer import ops
    x, w, b, off, _ = _topk_inputs(3, 64, 1000, torch.bfloat16, 1, False)
    assert ops.backends.resolve("encode_topk", x.device, x.dtype, k=300, backend="cuda") == "reference"
    assert ops.backends.resolve("encode_topk", x.device, x.dtype, k=256, backend="cuda") == "cuda"
    values, indices = ops.encode_topk(x, w, b, off, None, 300, backend="cuda")
    ref_v, _ = ref.encode_topk(x, w, b, off, None, 300)
    torch.testing.assert_close(values, ref_v)
    assert indices.shape == (3, 300)


@requires_cuda
def test_encode_topk_ties_are_value_sets():
    """Many exactly equal pre-activations: values must match, indices stay valid."""
    cb = _cb()
    T, D, F, k = 4, 32, 2048, 64
    x = torch.ones(T, D, device="cuda", dtype=torch.bfloat16)
    w = torch.zeros(D, F, device="cuda", dtype=torch.bfloat16)
    b = (torch.arange(F, device="cuda") % 7).to(torch.bfloat16)  # 7 distinct values, many ties
    off = torch.zeros(D, device="cuda", dtype=torch.bfloat16)
    values, indices = cb.encode_topk(x, w, b, off, None, k)
    expected, _ = torch.topk(b.float().expand(T, F), k, dim=-1)
    assert torch.equal(values, expected)
    assert torch.equal(b.float()[indices], values)
    assert all(len(set(r)) == k for r in indices.tolist())


# --------------------------------------------------------------------------- sparse decode

DECODE_SHAPES = [(1, 4096, 16384, 64), (8, 4096, 16384, 64), (512, 2304, 16384, 64), (5, 111, 300, 5)]


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T,D,F,k", DECODE_SHAPES)
@pytest.mark.parametrize("extras", ["none", "bias", "residual", "both"])
def test_sparse_decode_matches_reference(T, D, F, k, dtype, extras):
    cb = _cb()
    g = _gen(T + D + k)
    values = torch.relu(_randn(T, k, gen=g))
    indices = torch.randint(0, F, (T, k), device="cuda", generator=g)
    if k:
        indices[:, -1] = -1  # skipped entries
    w_dec = _randn(F, D, dtype=dtype, gen=g, scale=0.3)
    bias = _randn(D, dtype=dtype, gen=g, scale=0.1) if extras in ("bias", "both") else None
    residual = _randn(T, D, dtype=torch.bfloat16, gen=g) if extras in ("residual", "both") else None

    oracle = ref.sparse_decode(values, indices, w_dec.float(), *_upcast(bias, residual))
    same = ref.sparse_decode(values, indices, w_dec, bias, residual)
    got = cb.sparse_decode(values, indices, w_dec, bias, residual)
    torch.cuda.synchronize()
    assert got.dtype == same.dtype and got.shape == same.shape
    out_dtype = residual.dtype if residual is not None else dtype
    _assert_close_to_oracle("sparse_decode", got, same, oracle, out_dtype,
                            scale=max(oracle.float().abs().max().item(), 1.0))


@requires_cuda
def test_sparse_decode_empty_k_is_bias_plus_residual():
    cb = _cb()
    g = _gen(2)
    w_dec = _randn(50, 136, dtype=torch.bfloat16, gen=g)
    bias = _randn(136, dtype=torch.bfloat16, gen=g)
    residual = _randn(3, 136, dtype=torch.float16, gen=g)
    values = torch.empty(3, 0, device="cuda")
    indices = torch.empty(3, 0, dtype=torch.int64, device="cuda")
    got = cb.sparse_decode(values, indices, w_dec, bias, residual)
    torch.testing.assert_close(got, (residual.float() + bias.float()).to(torch.float16))


# --------------------------------------------------------------------------- CUDA graphs


@requires_cuda
def test_ops_capture_in_cuda_graph():
    """No host syncs or data-dependent allocation: the ops capture and replay."""
    cb = _cb()
    hidden, rows, coeffs, enc, enc_bias, threshold, dec, offset, modes = _sparse_inputs(8, 512, 6, 2, torch.bfloat16, 5)
    x, w, b, off, _ = _topk_inputs(8, 512, 4096, torch.bfloat16, 6, False)
    w_dec = _randn(4096, 512, dtype=torch.bfloat16, gen=_gen(9))
    h0 = hidden.clone()

    def step():
        hidden.copy_(h0)
        cb.sparse_steer_(hidden, rows, coeffs, enc, enc_bias, threshold, dec, offset, modes)
        v, i = cb.encode_topk(x, w, b, off, None, 32)
        return cb.sparse_decode(torch.relu(v), i, w_dec, None, hidden)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        eager = step().clone()  # warm-up (sets shared-memory limits, loads modules)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)
