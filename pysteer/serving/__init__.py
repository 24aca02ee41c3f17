"""Serving steered models: per-request steering in transformers' continuous batching
(:mod:`.continuous`), an OpenAI-compatible server over it (:mod:`.server`), and the
``pysteer serve`` command (:mod:`.cli`).

The names below load on first use, so ``pysteer.serving.cli`` (imported to build
``pysteer --help``) pulls in neither torch nor transformers through this package."""

from __future__ import annotations

from typing import Any

__all__ = ["ContinuousSteering", "RequestSteering", "SteeredEngine", "SteeringRequestError", "spec_digest"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import continuous

        return getattr(continuous, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
