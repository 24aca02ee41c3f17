"""nnsight: ``with lm.generate(...)``: for every step, ``layers[L].output += delta``.

The model is a copy wrapped in ``nnsight.LanguageModel`` (nnsight 0.8 calls it deprecated in
favour of ``TransformersModel``, which needs a repo id), so the other rows run unwrapped.
A bounded ``tracer.iter[:n]`` covers the n forwards of n new tokens; code after an open
``tracer.all()`` never runs, so the result is read after the bounded loop.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Iterator, Optional

import torch
from torch import Tensor

from .base import Peer, Runner, import_reason


class NnsightPeer(Peer):
    name = "nnsight"
    dist = "nnsight"
    edit = "dense"

    @classmethod
    def missing(cls) -> Optional[str]:
        return import_reason("nnsight", cls.dist)

    def __init__(self, material) -> None:
        super().__init__(material)
        import nnsight

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.lm = nnsight.LanguageModel(copy.deepcopy(material.model), tokenizer=material.tokenizer)

    def _runner(self, delta: Optional[Tensor]) -> Runner:
        lm, layer = self.lm, self.material.layer

        def generate(ids: Tensor, n: int) -> Tensor:
            with lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0) as tracer:
                if delta is not None:
                    for _ in tracer.iter[:n]:
                        lm.model.layers[layer].output += delta
                result = tracer.result.save()
            return result[:, ids.shape[1]:]

        def logits(ids: Tensor) -> Tensor:
            with lm.trace(ids):
                if delta is not None:
                    lm.model.layers[layer].output += delta
                out = lm.output.logits.save()
            return out

        return Runner(generate, logits)

    @contextlib.contextmanager
    def steered(self, rows: Optional[Tensor] = None) -> Iterator[Runner]:
        yield self._runner(self.material.dense_delta(rows, 0 if rows is None else len(rows)))

    def unsteered(self):
        return contextlib.nullcontext(self._runner(None))
