"""pysteer: steer Hugging Face language models toward following instructions.

Find what to steer (SAE features, dense directions), attach it to a model by
swapping decoder layers, and generate as usual. Importing pysteer never needs a GPU
or the compiled extension; see :func:`pysteer.ops.available_backends`. Names are
imported on first use (:mod:`pysteer._lazy`), so ``import pysteer`` and
``pysteer --help`` do not load torch.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from .errors import (BackendUnavailableError, PysteerError, SAEFormatError, SteeringSpecError,
                     UnsupportedModelError)

__version__ = "0.1.0"

__getattr__, __dir__, _lazy_all = lazy_exports(__name__, {
    ".sae": ("SAE", "load_sae", "Architecture", "architecture_named"),
    ".spec": ("SteeringSpec", "SparseIntervention", "DenseIntervention", "stack_specs"),
    ".ops": ("FeatureEdit", "DenseEdit", "available_backends", "set_backend", "use_backend"),
    ".patching": ("attach", "steer", "Steering"),
}, submodules=("cli", "discovery", "evaluation", "experiment", "fileio", "models", "ops", "patching",
               "sae", "spec", "training", "tuner"))
__all__ = [*_lazy_all, "PysteerError", "SAEFormatError", "SteeringSpecError", "BackendUnavailableError",
           "UnsupportedModelError", "__version__"]

if TYPE_CHECKING:
    from .ops import DenseEdit, FeatureEdit, available_backends, set_backend, use_backend
    from .patching import Steering, attach, steer
    from .sae import SAE, Architecture, architecture_named, load_sae
    from .spec import DenseIntervention, SparseIntervention, SteeringSpec, stack_specs
