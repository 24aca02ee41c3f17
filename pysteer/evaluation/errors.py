"""Errors of the evaluation package; each message names the file, line, id or argument at fault."""

from __future__ import annotations

from ..errors import PysteerError


class EvaluationError(PysteerError, ValueError):
    """An instruction id, checker argument or evaluation input is unknown or malformed."""


class PromptFileError(EvaluationError):
    """A prompt file (JSONL) is missing or has a malformed line."""


class CheckerUnavailableError(EvaluationError):
    """A checker exists but cannot run here (e.g. IFBench's need downloads at import)."""
