"""Model patching: swap decoder layers for steered ones and back.

Names are imported on first use (:mod:`pysteer._lazy`).
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".attach": ("Steering", "attach", "steer", "check_spec_fits"),
    ".families": ("DECODER_LAYERS", "decoder_layers", "model_facts"),
    ".steered_layer": ("SteeredLayer", "SteeringState"),
})

if TYPE_CHECKING:
    from .attach import Steering, attach, check_spec_fits, steer
    from .families import DECODER_LAYERS, decoder_layers, model_facts
    from .steered_layer import SteeredLayer, SteeringState
