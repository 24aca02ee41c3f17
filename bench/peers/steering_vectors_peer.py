"""steering-vectors: ``SteeringVector({layer: v}).apply(model, multiplier=s)`` (a forward hook)."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from torch import Tensor

from .base import Peer, Runner, hf_runner, import_reason


class SteeringVectorsPeer(Peer):
    name = "steering-vectors"
    dist = "steering-vectors"
    edit = "dense"
    multi_config = ("one vector per layer per patch: its hook reshapes the vector to (1, 1, D), and "
                    "token_indices masks positions of a fixed prompt length (a [B, T] mask no longer "
                    "matches during decode), so rows of one batch cannot get different vectors")
    note = ("installed with --no-deps: 0.12.2 (newest) pins transformers<5; runs unchanged on "
            "transformers 5.24 (its hook only needs the layer output)")

    @classmethod
    def missing(cls) -> Optional[str]:
        # Its metadata pins transformers<5, which would replace the installed transformers.
        return import_reason("steering_vectors", cls.dist, install="pip install --no-deps steering-vectors")

    @contextlib.contextmanager
    def steered(self, rows: Optional[Tensor] = None) -> Iterator[Runner]:
        if rows is not None:
            raise NotImplementedError(self.multi_config)
        from steering_vectors import SteeringVector

        m = self.material
        vector = SteeringVector({m.layer: m.vector.to(m.device, m.dtype)}, layer_type="decoder_block")
        with vector.apply(m.model, multiplier=m.strengths[0].item()):
            yield hf_runner(m.model)
