"""Errors of the experiment pipeline; each message names the argument, type or method at fault."""

from __future__ import annotations

from ..errors import PysteerError


class ExperimentError(PysteerError, ValueError):
    """An experiment's types, methods, SAEs, layers or budget do not fit together."""
