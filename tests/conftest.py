"""Shared test setup.

Triton decides at import time whether kernels are compiled or interpreted, so the
interpreter switch must be set before anything imports triton: on a machine without
a GPU every Triton kernel then runs on CPU tensors through ``TRITON_INTERPRET=1``.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="session")
def smollm2():
    """(SmolLM2-135M-Instruct, tokenizer), loaded once per session (~30 s on CPU).

    Shared by every test that needs the real model; tests must leave it unsteered
    (attach steering only inside ``with pysteer.steer(...)``).
    """
    from pysteer.models import load_model

    try:
        return load_model()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
