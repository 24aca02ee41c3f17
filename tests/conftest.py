"""Shared test setup.

Triton decides at import time whether kernels are compiled or interpreted, so the
interpreter switch must be set before anything imports triton: on a machine without
a GPU every Triton kernel then runs on CPU tensors through ``TRITON_INTERPRET=1``.
"""

import logging
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="session")
def smollm2():
    """(SmolLM2-135M-Instruct, tokenizer), loaded once per session (a few seconds from the model cache;
    the first load on a machine converts the GGUF, ~20 s).

    Shared by every test that needs the real model; tests must leave it unsteered
    (attach steering only inside ``with pysteer.steer(...)``).
    """
    from pysteer.models import load_model

    try:
        return load_model()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


class _DeprecationLog(logging.Handler):
    """Transformers reports some deprecations through its logger (``warning_once``), not the
    ``warnings`` module, so pytest's ``filterwarnings = error`` cannot see them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecat" in message.lower():
            self.messages.append(message)


_deprecations = _DeprecationLog()
logging.getLogger("transformers").addHandler(_deprecations)


@pytest.fixture(autouse=True)
def no_deprecated_transformers_api():
    """Fail the test in which pysteer used an API transformers logs as deprecated (the
    ``warnings``-module deprecations are errors through pyproject's ``filterwarnings``)."""
    # transformer_lens (imported by sae_lens) sets transformers' logger to ERROR when it is
    # imported, which would silence the deprecations this guard reads: keep it at WARNING.
    transformers_logger = logging.getLogger("transformers")
    if transformers_logger.getEffectiveLevel() > logging.WARNING:
        transformers_logger.setLevel(logging.WARNING)
    before = len(_deprecations.messages)
    yield
    new = _deprecations.messages[before:]
    assert not new, f"transformers logged a deprecation during this test: {new}"
