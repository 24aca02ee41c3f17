"""The backend registry: precedence, per-thread context, declared limits, caching, errors."""

import contextvars
import os
import threading

import pytest
import torch

from pysteer import ops, triton_kernels
from pysteer.errors import BackendUnavailableError
from pysteer.ops import backends, reference

CPU = torch.device("cpu")
requires_interpreter = pytest.mark.skipif(
    ops.available_backends("cpu")["triton"] is not None,
    reason="Triton on CPU tensors needs TRITON_INTERPRET=1 (set by conftest.py without a GPU)")


@pytest.fixture
def env():
    """os.environ to monkeypatch; the registry re-reads it before the test and after the undo."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(backends.ENVIRONMENT_VARIABLE, raising=False)
        backends.reload_environment()
        yield patch
    backends.reload_environment()


@pytest.fixture
def triton_calls(env):
    """Names of the Triton launchers called from now on (cached launchers are forgotten first)."""
    calls = []
    for name in backends.OPS:
        launch = getattr(triton_kernels, name)
        env.setattr(triton_kernels, name,
                    lambda *args, _name=name, _launch=launch: calls.append(_name) or _launch(*args))
    backends.reload_environment()
    return calls


def steer_args(T=5, D=24, S=3):
    gen = torch.Generator().manual_seed(1)
    return dict(hidden=torch.randn(T, D, generator=gen),
                row_index=torch.tensor([0, -1, 0, 0, -1][:T], dtype=torch.int32),
                coeffs=torch.randn(1, S, generator=gen), enc_rows=torch.randn(S, D, generator=gen),
                enc_bias=torch.zeros(S), threshold=torch.zeros(S), dec_rows=torch.randn(S, D, generator=gen),
                input_offset=torch.zeros(D), edit_modes=torch.zeros(S, dtype=torch.int8))


def resolved(**kwargs):
    return backends.resolve("sparse_steer_", CPU, torch.float32, **kwargs)


# ------------------------------------------------------------------------ precedence
@requires_interpreter
def test_argument_beats_context_beats_environment_beats_automatic(env):
    assert resolved() == "reference" and ops.check_backend(CPU) == "reference"  # automatic on CPU
    env.setenv(backends.ENVIRONMENT_VARIABLE, "triton")
    backends.reload_environment()
    assert resolved() == "triton" and ops.check_backend(CPU) == "triton"
    with ops.use_backend("reference"):
        assert resolved() == "reference" and ops.check_backend(CPU) == "reference"
        assert resolved(backend="triton") == "triton" and ops.check_backend(CPU, "triton") == "triton"
    assert contextvars.copy_context().run(lambda: ops.set_backend("reference") or resolved()) == "reference"
    assert resolved() == "triton"  # set_backend stayed in the copied context


@requires_interpreter
def test_the_op_argument_reaches_the_launcher_eager_and_compiled(triton_calls):
    args = steer_args()
    with ops.use_backend("reference"):
        ops.sparse_steer_(**args, backend="triton")
        assert triton_calls == ["sparse_steer_"]
    with ops.use_backend("triton"):
        ops.sparse_steer_(**args, backend="reference")
        assert triton_calls == ["sparse_steer_"]

    @torch.compile(fullgraph=True, backend="aot_eager")
    def steered(hidden):
        return ops.sparse_steer_(hidden, *list(args.values())[1:], backend="triton") * 2

    steered(args["hidden"].clone())
    assert triton_calls == ["sparse_steer_", "sparse_steer_"]


# ------------------------------------------------------------------- per thread
@requires_interpreter
def test_threads_with_different_contexts_each_resolve_their_own(env):
    barrier = threading.Barrier(2, timeout=30)
    seen, errors = {}, []

    def worker(name):
        try:
            with ops.use_backend(name):
                barrier.wait()  # both contexts are now active at once
                seen[name] = (resolved(), ops.check_backend(CPU))
                barrier.wait()  # neither leaves its context before the other has resolved
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("triton", "reference")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert seen == {"triton": ("triton", "triton"), "reference": ("reference", "reference")}
    assert resolved() == "reference"  # the main thread saw neither


# ------------------------------------------------------------------- declared limits
@requires_interpreter
def test_triton_beyond_its_topk_limit_falls_back_to_the_reference_exactly(env):
    gen = torch.Generator().manual_seed(5)
    D, F = 32, 512
    x, w_enc, b_enc, offset = (torch.randn(4, D, generator=gen), torch.randn(D, F, generator=gen),
                               torch.randn(F, generator=gen), torch.randn(D, generator=gen))
    assert backends.resolve("encode_topk", CPU, torch.float32, k=256, backend="triton") == "triton"
    assert backends.resolve("encode_topk", CPU, torch.float32, k=300, backend="triton") == "reference"
    values, indices = ops.encode_topk(x, w_enc, b_enc, offset, None, 300, backend="triton")
    expected_values, expected_indices = reference.encode_topk(x, w_enc, b_enc, offset, None, 300)
    assert torch.equal(values, expected_values) and torch.equal(indices, expected_indices)


@requires_interpreter
def test_dtypes_the_interpreter_cannot_take_go_to_the_reference(env):
    assert backends.resolve("dense_steer_", CPU, torch.float16, backend="triton") == "triton"
    assert backends.resolve("dense_steer_", CPU, torch.bfloat16, backend="triton") == "reference"
    # sparse_decode is judged on every float operand: an fp16 w_dec with a bf16 residual.
    assert backends.resolve("sparse_decode", CPU, torch.float16, torch.bfloat16, backend="triton") == "reference"


def test_forcing_cuda_on_cpu_is_a_readable_error_at_check_time(env):
    with pytest.raises(BackendUnavailableError, match="CUDA tensors only"):
        ops.check_backend(CPU, "cuda")
    env.setenv(backends.ENVIRONMENT_VARIABLE, "cuda")
    backends.reload_environment()
    with pytest.raises(BackendUnavailableError, match="'cuda' was requested"):
        ops.check_backend(CPU)
    with pytest.raises(BackendUnavailableError, match="CUDA tensors only"):
        ops.dense_steer_(torch.zeros(2, 4), torch.zeros(2, dtype=torch.int32), torch.zeros(1, 1),
                         torch.ones(1, 4), torch.zeros(1, dtype=torch.int8))
    assert ops.check_backend(CPU, "reference") == "reference"  # the argument still wins


# ------------------------------------------------------------------ environment
@requires_interpreter
def test_resolution_is_cached_until_the_environment_is_reloaded(env):
    env.setenv(backends.ENVIRONMENT_VARIABLE, "triton")
    backends.reload_environment()
    assert resolved() == "triton"
    env.setenv(backends.ENVIRONMENT_VARIABLE, "reference")
    assert resolved() == "triton" and ops.check_backend(CPU) == "triton"
    backends.reload_environment()
    assert resolved() == "reference"


def test_unknown_names_are_value_errors_naming_the_valid_ones(env):
    env.setenv(backends.ENVIRONMENT_VARIABLE, "bogus")
    backends.reload_environment()
    with pytest.raises(ValueError, match=r"PYSTEER_BACKEND='bogus'.*cuda, triton, reference"):
        ops.check_backend(CPU)
    with pytest.raises(ValueError, match="PYSTEER_BACKEND"):
        ops.sparse_steer_(**steer_args())
    assert os.environ[backends.ENVIRONMENT_VARIABLE] == "bogus"
    with pytest.raises(ValueError, match=r"unknown backend 'tpu'; expected one of cuda, triton, reference"):
        ops.sparse_steer_(**steer_args(), backend="tpu")
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        ops.use_backend("tpu").__enter__()
