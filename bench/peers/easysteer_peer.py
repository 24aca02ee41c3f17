"""EasySteer: the name on PyPI holds no code, so there is nothing to adapt (the row says why)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

from .base import Peer, package_version


class EasySteerPeer(Peer):
    name = "EasySteer"
    dist = "easysteer"
    edit = "n/a"

    @classmethod
    def missing(cls) -> Optional[str]:
        version = package_version(cls.dist)
        spec = importlib.util.find_spec("easysteer")
        if version is None or spec is None:
            return ("not run: PyPI's only `easysteer` (0.0.1.dev0) is an empty package (its "
                    "easysteer/__init__.py is 0 bytes; metadata points at EasyEdit2), and the vLLM-based "
                    "EasySteer is not released on PyPI; installing vLLM would also replace torch")
        init = Path(spec.origin or "")
        if init.is_file() and init.stat().st_size == 0:
            return f"not run: easysteer {version} is installed but empty (easysteer/__init__.py is 0 bytes)"
        return f"not run: easysteer {version} has no adapter here yet"
