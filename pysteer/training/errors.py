"""The training package's error: a bad setting, corpus or checkpoint, named in the message."""

from __future__ import annotations

from ..errors import PysteerError


class TrainingError(PysteerError, ValueError):
    """A training setting, corpus file or checkpoint is invalid or does not match this run."""
