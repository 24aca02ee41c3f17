"""The op declarations: opcheck, torch.compile, the reference against hand-written formulas,
and bad inputs rejected before any compute."""

import pytest
import torch

from pysteer import ops
from pysteer.errors import BackendUnavailableError
from pysteer.ops import reference

T, D, S, C = 9, 37, 5, 3


def sparse_args(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    return dict(hidden=r(T, D).to(dtype), row_index=torch.tensor([0, 1, 2, -1, 0, 2, -1, 1, 0], dtype=torch.int32),
                coeffs=r(C, S), enc_rows=r(S, D).to(dtype), enc_bias=r(S).to(dtype),
                threshold=torch.rand(S, generator=gen) * 0.3, dec_rows=r(S, D).to(dtype),
                input_offset=r(D).to(dtype), edit_modes=torch.tensor([0, 1, 2, 3, 0], dtype=torch.int8))


def dense_args(seed=0):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(2, D, generator=gen)
    return dict(hidden=torch.randn(T, D, generator=gen), row_index=torch.tensor([0, -1, 1, 1, 0, -1, 0, 1, 0], dtype=torch.int32),
                coeffs=torch.randn(2, 2, generator=gen), directions=u / u.norm(dim=1, keepdim=True),
                dense_modes=torch.tensor([0, 1], dtype=torch.int8))


def test_sparse_steer_matches_the_formula_by_hand():
    args = sparse_args()
    h0 = args["hidden"].clone()
    ops.sparse_steer_(**args)
    for t in range(T):
        row = int(args["row_index"][t])
        if row < 0:
            assert torch.equal(args["hidden"][t], h0[t])
            continue
        expected = h0[t].clone()
        for i in range(S):
            pre = float(args["enc_rows"][i] @ (h0[t] - args["input_offset"]) + args["enc_bias"][i])
            f = max(pre, 0.0) if pre > float(args["threshold"][i]) else 0.0
            c = float(args["coeffs"][row, i])
            f_new = [f + c, c, c * f, 0.0][int(args["edit_modes"][i])]
            expected += (f_new - f) * args["dec_rows"][i]
        torch.testing.assert_close(args["hidden"][t], expected, rtol=1e-5, atol=1e-5)


def test_dense_projection_matches_stolfo_formula():
    args = dense_args()
    h0 = args["hidden"].clone()
    ops.dense_steer_(**args)
    u0, u1 = args["directions"]
    for t in range(T):
        row = int(args["row_index"][t])
        if row < 0:
            assert torch.equal(args["hidden"][t], h0[t])
            continue
        c_add, z_bar = args["coeffs"][row]
        expected = h0[t] + c_add * u0 + (z_bar - h0[t] @ u1) * u1  # h + c·u  and  h + (z̄ − h·u)·u
        torch.testing.assert_close(args["hidden"][t], expected, rtol=1e-5, atol=1e-5)
    # With only the projection, h·u lands exactly on z̄.
    h = torch.randn(4, D)
    ops.dense_steer_(h, torch.zeros(4, dtype=torch.int32), torch.tensor([[0.7]]), u1[None].contiguous(),
                     torch.tensor([1], dtype=torch.int8))
    torch.testing.assert_close(h @ u1, torch.full((4,), 0.7), rtol=1e-5, atol=1e-5)


def test_encode_topk_and_sparse_decode_against_dense_math():
    gen = torch.Generator().manual_seed(3)
    x, w, b, off = (torch.randn(6, D, generator=gen), torch.randn(D, 50, generator=gen),
                    torch.randn(50, generator=gen), torch.randn(D, generator=gen))
    values, indices = ops.encode_topk(x, w, b, off, None, 7)
    pre = (x - off) @ w + b
    torch.testing.assert_close(values, pre.sort(dim=1, descending=True).values[:, :7])
    torch.testing.assert_close(pre.gather(1, indices), values)
    w_dec = torch.randn(50, D, generator=gen)
    indices_with_gap = indices.clone()
    indices_with_gap[:, -1] = -1
    out = ops.sparse_decode(values, indices_with_gap, w_dec, bias=off)
    dense = torch.zeros(6, 50).scatter(1, indices[:, :-1], values[:, :-1])
    torch.testing.assert_close(out, dense @ w_dec + off, rtol=1e-5, atol=1e-5)


def test_opcheck_every_op():
    args = sparse_args()
    torch.library.opcheck(torch.ops.pysteer.sparse_steer_.default, tuple(args.values()) + (None,))
    acts = torch.rand(T, S)
    torch.library.opcheck(torch.ops.pysteer.sparse_steer_.default, tuple(sparse_args().values()) + (acts,))
    torch.library.opcheck(torch.ops.pysteer.dense_steer_.default, tuple(dense_args().values()))
    x, w, b = torch.randn(4, D), torch.randn(D, 30), torch.randn(30)
    torch.library.opcheck(torch.ops.pysteer.encode_topk.default, (x, w, b, torch.zeros(D), torch.rand(30) + 0.5, 6))
    values, indices = torch.randn(4, 6), torch.randint(-1, 30, (4, 6))
    torch.library.opcheck(torch.ops.pysteer.sparse_decode.default, (values, indices, torch.randn(30, D), torch.randn(D), torch.randn(4, D)))


def test_torch_compile_fullgraph_runs_through_the_ops():
    args = sparse_args()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def steered(hidden, row_index):
        ops.sparse_steer_(hidden, row_index, *list(args.values())[2:])
        values, indices = ops.encode_topk(hidden, args["enc_rows"].t().contiguous(), args["enc_bias"],
                                          args["input_offset"], None, 2)
        return hidden * 2, values, indices

    eager_hidden = args["hidden"].clone()
    ops.sparse_steer_(eager_hidden, args["row_index"], *list(args.values())[2:])
    hidden = args["hidden"].clone()
    out, values, _ = steered(hidden, args["row_index"])
    torch.testing.assert_close(out, eager_hidden * 2)
    assert values.shape == (T, 2)


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("mutate,message", [
    (lambda a: a.update(hidden=torch.randn(T, D + 1)), "d_model"),
    (lambda a: a.update(hidden=a["hidden"].double()), "fp32, fp16 or bf16"),
    (lambda a: a.update(hidden=a["hidden"].half()), "must be torch.float16"),
    (lambda a: a.update(row_index=a["row_index"].long()), "row_index must be torch.int32"),
    (lambda a: a.update(row_index=a["row_index"][:-1]), "row_index must have shape"),
    (lambda a: a.update(coeffs=torch.randn(C, S + 1)), "coeffs must be"),
    (lambda a: a.update(edit_modes=a["edit_modes"].long()), "edit_modes must be torch.int8"),
    (lambda a: a.update(hidden=torch.randn(D, T).t()), "contiguous"),
    (lambda a: a.update(dec_rows=a["dec_rows"].to("meta")), "is on meta"),
])
def test_sparse_steer_rejects_bad_inputs_before_compute(mutate, message):
    args = sparse_args()
    mutate(args)
    before = args["hidden"].clone() if args["hidden"].device.type != "meta" else None
    with pytest.raises(ValueError, match=message):
        ops.sparse_steer_(**args)
    if before is not None and args["hidden"].is_contiguous():
        assert torch.equal(args["hidden"], before)  # nothing was written


def test_forcing_an_unavailable_backend_is_a_readable_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with ops.use_backend("cuda"), pytest.raises(BackendUnavailableError, match="CUDA"):
        ops.sparse_steer_(**sparse_args())
    with pytest.raises(ValueError, match="unknown backend"):
        ops.set_backend("tpu")


def test_reference_backend_is_the_cpu_default():
    assert ops.active_backend_name("cpu") == "reference"
    assert ops.available_backends("cpu")["reference"] is None
    assert reference.sparse_steer_ is ops.backends.backend_for(torch.device("cpu")).sparse_steer_


@pytest.mark.skipif(not torch.cuda.is_available() and __import__("os").environ.get("TRITON_INTERPRET") != "1",
                    reason="Triton needs a GPU or TRITON_INTERPRET=1")
def test_forced_triton_backend_runs_a_steered_model_like_the_reference():
    import pysteer
    from model_zoo import left_pad, prompts, tiny_model, tiny_spec

    model = tiny_model("qwen2")
    ids, mask = left_pad(prompts())
    with torch.no_grad(), pysteer.steer(model, tiny_spec(n_configs=2), rows=[0, 1, -1]):
        expected = model(ids, attention_mask=mask).logits
        with ops.use_backend("triton"):
            assert ops.active_backend_name("cpu") == "triton"
            got = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- NaN stays in its row
@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("op,make_args", [(ops.sparse_steer_, sparse_args), (ops.dense_steer_, dense_args)],
                         ids=["sparse_steer_", "dense_steer_"])
def test_a_nan_in_one_hidden_row_leaves_every_other_row_bit_identical(op, make_args, backend):
    if ops.available_backends("cpu")[backend] is not None:
        pytest.skip(ops.available_backends("cpu")[backend])
    for nan_row in (0, 3):  # a steered row and one with row_index -1
        clean, poisoned = make_args(), make_args()
        poisoned["hidden"][nan_row, 5] = float("nan")
        op(**clean, backend=backend)
        op(**poisoned, backend=backend)
        others = torch.arange(T) != nan_row
        assert torch.equal(poisoned["hidden"][others], clean["hidden"][others])
        assert torch.isnan(poisoned["hidden"][nan_row]).any()
