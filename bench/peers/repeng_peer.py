"""repeng: ``ControlModel(model, [layer])`` + ``set_control(ControlVector, coeff)``.

Per-row configurations go through ``set_raw_control`` with a [B, 1, D] tensor, which its
``ControlModule`` broadcasts like a [1, 1, D] one.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from torch import Tensor

from .base import Peer, Runner, hf_runner, package_version


def _import_repeng():
    # repeng 0.4.0 (newest) pins numpy<2, and its only numpy-2 break is `np.float_` in the type
    # hints of ControlVector.__mul__; aliasing it lets the released code import unchanged.
    import numpy as np

    if not hasattr(np, "float_"):
        np.float_ = np.float64
    import repeng

    return repeng


class RepengPeer(Peer):
    name = "repeng"
    dist = "repeng"
    edit = "dense"
    note = ("installed with --no-deps (0.4.0 pins numpy<2 and would downgrade numpy); imported with "
            "np.float_ aliased to np.float64")

    @classmethod
    def missing(cls) -> Optional[str]:
        if package_version(cls.dist) is None:
            return "repeng is not installed (pip install --no-deps repeng)"
        try:
            _import_repeng()
        except Exception as exc:
            return f"repeng {package_version(cls.dist)} does not import: {type(exc).__name__}: {exc}"
        return None

    def __init__(self, material) -> None:
        super().__init__(material)
        self._repeng = _import_repeng()
        self.vector = self._repeng.ControlVector(model_type=material.model.config.model_type,
                                                 directions={material.layer: material.vector.float().cpu().numpy()})

    @contextlib.contextmanager
    def steered(self, rows: Optional[Tensor] = None) -> Iterator[Runner]:
        m = self.material
        control = self._repeng.ControlModel(m.model, [m.layer])  # swaps the layer in place
        try:
            if rows is None:
                control.set_control(self.vector, coeff=m.strengths[0].item())
            else:
                control.set_raw_control({m.layer: m.dense_delta(rows, len(rows))})
            yield hf_runner(m.model)
        finally:
            control.reset()
            control.unwrap()
