"""pysteer: steer Hugging Face language models toward following instructions.

Find what to steer (SAE features, dense directions), attach it to a model by
swapping decoder layers, and generate as usual. Importing pysteer never needs a GPU
or the compiled extension; see :func:`pysteer.ops.available_backends`.
"""

from .errors import (BackendUnavailableError, PysteerError, SAEFormatError, SteeringSpecError,
                     UnsupportedModelError)
from .ops import FeatureEdit, DenseEdit, available_backends, set_backend, use_backend
from .patching import Steering, attach, steer
from .sae import SAE, Architecture, architecture_named, load_sae
from .spec import DenseIntervention, SparseIntervention, SteeringSpec, stack_specs

__version__ = "0.1.0"

__all__ = ["SAE", "load_sae", "Architecture", "architecture_named", "SteeringSpec",
           "SparseIntervention", "DenseIntervention", "stack_specs",
           "FeatureEdit", "DenseEdit", "attach", "steer", "Steering", "available_backends",
           "set_backend", "use_backend", "PysteerError", "SAEFormatError", "SteeringSpecError",
           "BackendUnavailableError", "UnsupportedModelError", "__version__"]
