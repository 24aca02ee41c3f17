"""Exceptions users can catch. Each message names the file, key or argument at fault."""

from __future__ import annotations


class PysteerError(Exception):
    """Base class of pysteer's own errors."""


class SAEFormatError(PysteerError, ValueError):
    """An SAE directory, config file or weights file is missing, malformed or inconsistent."""


class SteeringSpecError(PysteerError, ValueError):
    """A steering spec (in memory or on disk) is malformed or does not fit the model/SAE."""


class BackendUnavailableError(PysteerError, RuntimeError):
    """The requested kernel backend cannot run here (no GPU, no extension, no Triton)."""


class UnsupportedModelError(PysteerError, ValueError):
    """The model family is not in pysteer's table of decoder-layer locations."""
