"""Model patching: swap decoder layers for steered ones and back."""

from .attach import Steering, attach, check_spec_fits, steer
from .families import DECODER_LAYERS, decoder_layers, model_facts
from .steered_layer import SteeredLayer, SteeringState

__all__ = ["Steering", "attach", "steer", "check_spec_fits", "DECODER_LAYERS", "decoder_layers",
           "model_facts", "SteeredLayer", "SteeringState"]
