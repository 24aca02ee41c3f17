"""The rows every peer is compared with: the unsteered model and pysteer itself."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from torch import Tensor

import pysteer

from .base import Peer, Runner, hf_runner


class Unsteered(Peer):
    """Plain Hugging Face ``generate``: the baseline of every overhead."""

    name = "unsteered"
    dist = "transformers"
    edit = "none"

    @contextlib.contextmanager
    def steered(self, rows: Optional[Tensor] = None) -> Iterator[Runner]:
        yield hf_runner(self.material.model)


class PysteerDense(Peer):
    """``pysteer.steer`` with ``DenseIntervention(layer, v, [[s_c]], "add")``: h' = h + s_c·v."""

    name = "pysteer (dense)"
    dist = "pysteer"
    edit = "dense"
    reference = True

    def spec(self) -> pysteer.SteeringSpec:
        m = self.material
        iv = pysteer.DenseIntervention(m.layer, m.vector[None], m.strengths[:, None], "add")
        return pysteer.SteeringSpec([iv])

    @contextlib.contextmanager
    def steered(self, rows: Optional[Tensor] = None) -> Iterator[Runner]:
        with pysteer.steer(self.material.model, self.spec(), rows=rows):
            yield hf_runner(self.material.model)


class PysteerSAE(PysteerDense):
    """``pysteer.steer`` with ``SparseIntervention.from_sae(sae, S, a, "add")`` (fused sparse op)."""

    name = "pysteer (SAE)"
    edit = "sae"

    def spec(self) -> pysteer.SteeringSpec:
        m = self.material
        iv = pysteer.SparseIntervention.from_sae(m.sae, m.features, m.coefficients, "add", layer=m.layer)
        return pysteer.SteeringSpec([iv])
