"""Instruction-following rate (IFR), response rate (RR) and output quality (OQ).

For N prompts with responses r_1..r_N:

    IFR_strict = (1/N) Σ_n [every instruction of prompt n followed, strict]
    IFR_loose  = the same with IFEval's loose variants (see checkers.loose_variants)
    RR         = (1/N) Σ_n [r_n is not empty and not a refusal]
    OQ         = (1/N) Σ_n q_n,   q_n = 0                                   if r_n is empty
                                  q_n = [not degenerate(r_n)] · min(1, ppl_ref / ppl_n)   otherwise

where ppl_n is the perplexity of r_n given its chat-templated prompt under the
*unsteered* model (:func:`response_perplexity`) and ppl_ref (default 20) the
perplexity at or below which text counts as fully fluent; without a model the
perplexity factor is 1 and OQ measures degeneration alone. Repetition is not caught
by perplexity (loops are very predictable), hence the degeneration factor.

The tuner's reward is ``w_ifr·IFR_loose + w_rr·RR + w_oq·OQ`` (:func:`reward`).

The tuner's quality outcome is a perplexity *ratio* to the unsteered model's own
responses to the same prompts (:func:`perplexity_ratio`, the median over prompts of
ppl(steered) / ppl(reference)); :func:`token_perplexity` scores given token ids under
any prompt, e.g. the prompt with the instruction when the response was generated without.
"""

from __future__ import annotations

import contextlib
import math
import re
import statistics
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import torch

from .checkers import check_instruction
from .defaults import DEFAULT_PPL_REF, DEFAULT_WEIGHTS
from ..patching.families import decoder_layers
from ..patching.shared_prefill import run_distinct_prompts
from ..models import token_logprobs
from .errors import EvaluationError
from .prompts import EvalPrompt
from .text import words


# Openings of refusals and evasions (matched case-insensitively near the start).
REFUSAL_PATTERNS = (
    r"i'?m sorry", r"i am sorry", r"sorry, but", r"i apologi[sz]e", r"my apologies",
    r"i (?:can ?not|can'?t|won'?t|will not|am unable to|'?m unable to|am not able to|'?m not able to)",
    r"i (?:must|have to) (?:decline|refuse)", r"i'?m not (?:comfortable|allowed|permitted)",
    r"as an ai\b", r"as a (?:large )?language model", r"i do not (?:feel comfortable|have the ability)",
    r"it is not appropriate", r"it'?s not appropriate", r"i'?m (?:just )?an ai\b",
)
_REFUSAL = re.compile("|".join(f"(?:{p})" for p in REFUSAL_PATTERNS), re.IGNORECASE)
_REFUSAL_WINDOW = 160  # characters: refusals open the reply; "I can't" deep in an answer is content


def is_refusal_or_empty(response: str) -> bool:
    """True for an empty/whitespace response or one opening with a refusal pattern
    (:data:`REFUSAL_PATTERNS`, searched in its first 160 characters)."""
    text = response.strip().replace("’", "'")
    return not text or _REFUSAL.search(text[:_REFUSAL_WINDOW]) is not None


_RULE_CHARS = set("-=_*#.~ \t\n")  # markdown rules and indentation repeat legitimately
# List enumerators ("1. ", "2) " at a line start) differ from item to item, so a list that repeats
# one item over and over would otherwise read as new text at every line.
_ENUMERATOR = re.compile(r"^[ \t]*\d{1,3}[.)](?=\s|$)", re.MULTILINE)
# One short unit (2–10 characters) repeated back to back: a sub-word loop ("BUSBUSBUS", "S "S "S ")
# that neither word n-grams (one "word") nor one-character runs see.
_UNIT_RUN = re.compile(r"(.{2,10}?)\1{3,}", re.DOTALL)
_UNIT_MARKUP_COPIES = 10  # a unit without letters ("* ", '" ') must repeat this often: "* * *" is a rule
# A run of this many letters with no space, digit or case change is not a word of any language
# (the longest dictionary words are about 30; camelCase identifiers split at their capitals):
# it is sub-word tokens glued together, as a model emits when steering breaks it.
_GLUED_LETTERS = 30
_LETTER_RUN = re.compile(r"[^\W\d_]{%d,}" % _GLUED_LETTERS)
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
# Readable text, code and JSON are mostly letters and digits; below this share of the visible
# characters (over at least _MARKUP_MIN of them) a response is markup with nothing in it.
_MIN_CONTENT, _MARKUP_MIN = 0.25, 20


def degeneration(response: str, *, n: int = 3, max_repetition: float = 0.5, max_run: int = 20,
                 max_broken: float = 0.02) -> dict:
    """Signs of degenerate text.

    - ``repetition``: fraction of word n-grams that repeat an earlier one (over the whole
      text: 1 − #distinct / #total; 0 if fewer than n+1 words), or that fraction over the
      second half's n-grams if larger; list enumerators ("1.", "2)") are left out;
    - ``longest_run``: longest run, in characters, of one repeated character (markdown rule
      characters and indentation excluded) or of one short unit repeated back to back
      (2–10 characters, ≥ 4 copies with a letter in it, ≥ 10 copies without);
    - ``broken``: fraction of characters that are U+FFFD or non-printable control/format
      characters (newlines and tabs excepted), or letters of a glued run of ≥ 30 letters
      (no space, digit or case change); for a response of markup alone (letters and
      digits < 25 % of ≥ 20 visible characters), 1 − that share.

    ``is_degenerate`` when repetition > max_repetition, longest_run ≥ max_run or
    broken > max_broken.
    """
    tokens = [w.lower() for w in words(_ENUMERATOR.sub(" ", response))]
    seen, repeats = set(), []
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i:i + n])
        repeats.append(gram in seen)
        seen.add(gram)
    repetition = sum(repeats) / len(repeats) if len(tokens) > n else 0.0
    # Greedy loops are absorbing: once a response repeats itself it does so to the end, so a
    # loop after a good opening shows in the second half, undiluted by the opening.
    tail = repeats[len(repeats) // 2:]
    if len(tail) > 2 * n:
        repetition = max(repetition, sum(tail) / len(tail))
    longest, run, previous, indent = 0, 0, None, True
    for char in response:
        if char != previous:
            run, indent = 1, previous is None or previous == "\n"
        else:
            run += 1
        previous = char
        # Spaces and tabs count except as indentation: a run of them mid-line is filler.
        if char not in _RULE_CHARS or (char in " \t" and not indent):
            longest = max(longest, run)
    for match in _UNIT_RUN.finditer(response):
        unit, span = match.group(1), len(match.group(0))
        if any(c.isalpha() for c in unit) or (span // len(unit) >= _UNIT_MARKUP_COPIES and not unit.isspace()):
            longest = max(longest, span)
    bad = sum(c == "\ufffd" or (unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs") and c not in "\n\t\r")
              for c in response)
    bad += sum(len(piece) for letters in _LETTER_RUN.findall(response) for piece in _CAMEL.split(letters)
               if len(piece) >= _GLUED_LETTERS)
    broken = bad / len(response) if response else 0.0
    visible = [c for c in response if not c.isspace()]
    if len(visible) >= _MARKUP_MIN:
        content = sum(c.isalnum() for c in visible) / len(visible)
        if content < _MIN_CONTENT:
            broken = max(broken, 1.0 - content)
    return {"repetition": repetition, "longest_run": longest, "broken": broken,
            "is_degenerate": repetition > max_repetition or longest >= max_run or broken > max_broken}


def prompt_token_ids(tokenizer, prompt: str, chat: bool) -> list[int]:
    """Token ids of the prompt exactly as :func:`pysteer.models.encode_prompts` builds them."""
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


@torch.no_grad()
def response_perplexity(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], *,
                        steering=None, batch_size: int = 8, chat: bool = True) -> list[float]:
    """Perplexity of each response given its prompt: exp(mean_t −log p(r_t | prompt, r_<t)).

    The prompt is chat-templated with the generation prompt (as it was generated);
    the response is tokenized without special tokens. Empty responses get NaN.
    Texts are tokenized here and scored by :func:`token_perplexity` (which see for the
    batching, the shared prompt caches and ``steering``).
    """
    if len(prompts) != len(responses):
        raise EvaluationError(f"{len(prompts)} prompts but {len(responses)} responses")
    prompt_ids = {p: prompt_token_ids(tokenizer, p, chat) for p in dict.fromkeys(prompts)}
    response_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return token_perplexity(model, [prompt_ids[p] for p in prompts], response_ids, steering=steering,
                            batch_size=batch_size, pad_token_id=pad)


@torch.no_grad()
def token_perplexity(model, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], *,
                     steering=None, batch_size: int = 8, pad_token_id: int = 0) -> list[float]:
    """Perplexity of response token ids given prompt token ids (one pair per entry):
    exp(mean_t −log p(r_t | prompt, r_<t)); NaN for an empty response.

    The one scorer of given (prompt, response) pairs: :func:`response_perplexity` tokenizes
    texts for it, and the tuner's quality references score generated ids with it under a
    prompt other than the one they were generated from (the prompt with the instruction).

    Each distinct (prompt, response) pair is scored once. Responses are scored
    ``batch_size`` at a time, grouped by prompt. Each distinct
    prompt of a batch is run once (left-padded, with explicit positions, so it equals
    an unpadded pass) and its KV cache is shared by every response to it: the tuner
    scores q candidates' responses to the same P prompts, and that q-fold prompt
    prefill is most of the work. Only the response positions are projected onto the
    vocabulary.

    Scored under the *unsteered* model: pass the attached ``steering`` (a
    :class:`pysteer.Steering`), if any, and scoring runs under ``steering.unsteered()``.
    """
    if len(prompt_ids) != len(response_ids):
        raise EvaluationError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be ≥ 1, got {batch_size}")
    prompts = [tuple(int(t) for t in p) for p in prompt_ids]
    response_ids = [[int(t) for t in r] for r in response_ids]
    if any(not p for p in prompts):
        raise EvaluationError("a prompt tokenizes to nothing: its response's first token has no context")
    device = next(model.parameters()).device
    pad = int(pad_token_id)
    out = [float("nan")] * len(prompts)
    # A (prompt, response) pair is scored once however often it occurs (greedy candidates
    # close in coefficients often answer alike); same prompts go next to each other, so a
    # batch holds few distinct prompts.
    first_of: dict[tuple, int] = {}
    for i, r in enumerate(response_ids):
        first_of.setdefault((prompts[i], tuple(r)), i)
    scored = sorted((i for i in first_of.values() if response_ids[i]), key=lambda i: (prompts[i], i))
    layers = decoder_layers(model)
    with steering.unsteered() if steering is not None else contextlib.nullcontext():
        for start in range(0, len(scored), batch_size):
            chunk = scored[start:start + batch_size]
            distinct = list(dict.fromkeys(prompts[i] for i in chunk))
            ids, prompt_mask = _left_pad([list(p) for p in distinct], pad, device)
            pass_ = run_distinct_prompts(model, ids, prompt_mask, depth=len(layers), every_layer=True)
            owner = torch.tensor([distinct.index(prompts[i]) for i in chunk], device=device)
            cache = pass_.cache_for(owner, copy_cache=False)  # one copy of its prompt's cache per response
            width = max(len(response_ids[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, :len(response_ids[i])] = torch.tensor(response_ids[i])
                mask[row, :len(response_ids[i])] = 1
            ids, mask = ids.to(device), mask.to(device)
            positions = pass_.lengths[owner].unsqueeze(1) + torch.arange(width, device=device)
            logits = model(input_ids=ids, attention_mask=torch.cat([pass_.mask[owner], mask], 1),
                           position_ids=positions, cache=cache, use_cache=True).logits
            # log p(r_t) for t ≥ 1 from the response positions, t = 0 from the prompt's last one.
            later = token_logprobs(logits[:, :-1], ids[:, 1:])
            first = pass_.next_logprobs[owner].gather(-1, ids[:, :1]).squeeze(-1)
            token_lp = torch.cat([first.unsqueeze(1), later], 1).double().cpu()
            for row, i in enumerate(chunk):
                out[i] = math.exp(-token_lp[row, :len(response_ids[i])].mean().item())
    return [out[first_of[(p, tuple(r))]] for p, r in zip(prompts, response_ids)]


def _left_pad(prompt_ids: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [U, W], attention mask [U, W]) of the prompts, left-padded to the longest."""
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
    mask = torch.zeros(len(prompt_ids), width, dtype=torch.long)
    for row, p in enumerate(prompt_ids):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    return ids.to(device), mask.to(device)


@dataclass
class ResponseScore:
    """One response: instruction verdicts, response/degeneration flags and perplexity."""

    followed_strict: bool
    followed_loose: bool
    per_instruction: dict[str, bool]         # instruction id -> followed (strict)
    responded: bool
    degenerate: bool
    perplexity: Optional[float]
    per_instruction_loose: dict[str, bool] = field(default_factory=dict)
    quality: float = 0.0                      # q_n of the module docstring


@dataclass
class EvalReport:
    """Aggregates over prompts (see the module docstring for the formulas)."""

    ifr_strict: float
    ifr_loose: float
    rr: float
    degenerate_rate: float
    mean_perplexity: Optional[float]
    oq: float
    per_type: dict[str, dict[str, float]]   # instruction id -> {"ifr_strict", "ifr_loose", "n"}
    scores: list[ResponseScore]
    n: int = 0
    ppl_ref: float = DEFAULT_PPL_REF
    instruction_in_prompt: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def _finite(value: Optional[float]) -> Optional[float]:
    return value if value is not None and math.isfinite(value) else None


def score_responses(prompts: Sequence[EvalPrompt], responses: Sequence[str], *, model=None, tokenizer=None,
                    steering=None, instruction_in_prompt: bool = True, ppl_ref: float = DEFAULT_PPL_REF,
                    batch_size: int = 8, perplexities: Optional[Sequence[float]] = None) -> EvalReport:
    """Check every response against its prompt's instructions and aggregate IFR/RR/OQ.

    Perplexity is computed only when ``model`` and ``tokenizer`` are given, conditioned
    on the text that was sent (``prompt``, or ``base_prompt`` when
    ``instruction_in_prompt`` is False), under the unsteered model (see
    :func:`response_perplexity`) — unless ``perplexities`` were already computed
    (e.g. for many candidates' responses in one pass).
    """
    if len(prompts) != len(responses):
        raise EvaluationError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        raise EvaluationError("nothing to score: no prompts")
    if ppl_ref <= 0:
        raise EvaluationError(f"ppl_ref must be positive, got {ppl_ref}")
    if (model is None) != (tokenizer is None):
        raise EvaluationError("pass both model and tokenizer (for perplexity) or neither")
    if perplexities is not None:
        if len(perplexities) != len(prompts):
            raise EvaluationError(f"{len(perplexities)} perplexities for {len(prompts)} prompts")
        perplexities = [_finite(v) for v in perplexities]
    elif model is None:
        perplexities = [None] * len(prompts)
    else:
        sent = [p.text(instruction_in_prompt) for p in prompts]
        perplexities = [_finite(v) for v in response_perplexity(model, tokenizer, sent, responses,
                                                                 steering=steering, batch_size=batch_size)]
    scores, per_type = [], {}
    for prompt, response, ppl in zip(prompts, responses, perplexities):
        strict, loose = {}, {}
        for instruction_id, kwargs in zip(prompt.instruction_ids, prompt.kwargs):
            s = check_instruction(instruction_id, kwargs, response, prompt=prompt.prompt)
            lo = s or check_instruction(instruction_id, kwargs, response, prompt=prompt.prompt, loose=True)
            strict[instruction_id] = strict.get(instruction_id, True) and s
            loose[instruction_id] = loose.get(instruction_id, True) and lo
            tally = per_type.setdefault(instruction_id, {"ifr_strict": 0.0, "ifr_loose": 0.0, "n": 0})
            tally["ifr_strict"] += s
            tally["ifr_loose"] += lo
            tally["n"] += 1
        degenerate = degeneration(response)["is_degenerate"]
        fluency = 1.0 if ppl is None else min(1.0, ppl_ref / ppl)
        quality = 0.0 if not response.strip() else (not degenerate) * fluency
        scores.append(ResponseScore(all(strict.values()), all(loose.values()), strict,
                                    not is_refusal_or_empty(response), degenerate, ppl, loose, quality))
    for tally in per_type.values():
        tally["ifr_strict"] /= tally["n"]
        tally["ifr_loose"] /= tally["n"]
    n = len(scores)
    known = [s.perplexity for s in scores if s.perplexity is not None]
    return EvalReport(ifr_strict=sum(s.followed_strict for s in scores) / n,
                      ifr_loose=sum(s.followed_loose for s in scores) / n,
                      rr=sum(s.responded for s in scores) / n,
                      degenerate_rate=sum(s.degenerate for s in scores) / n,
                      mean_perplexity=sum(known) / len(known) if known else None,
                      oq=sum(s.quality for s in scores) / n,
                      per_type=per_type, scores=scores, n=n, ppl_ref=ppl_ref,
                      instruction_in_prompt=instruction_in_prompt)


def reward(report: EvalReport, weights: Optional[dict] = None) -> float:
    """w_ifr·IFR_loose + w_rr·RR + w_oq·OQ; default weights {"ifr": 1.0, "rr": 0.5, "oq": 0.5}."""
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    unknown = sorted(set(weights) - set(DEFAULT_WEIGHTS))
    if unknown:
        raise EvaluationError(f"reward weights {unknown} are unknown; use keys {sorted(DEFAULT_WEIGHTS)}")
    return (weights.get("ifr", 0.0) * report.ifr_loose + weights.get("rr", 0.0) * report.rr
            + weights.get("oq", 0.0) * report.oq)


def perplexity_ratio(steered: Sequence[float], reference: Sequence[float]) -> Optional[float]:
    """median_p ppl(steered_p) / ppl(reference_p): the quality outcome of one candidate over P prompts.

    ``steered[p]`` and ``reference[p]`` are the perplexities, under the unsteered model and
    the same prompt, of the candidate's response and of the unsteered model's own response
    to prompt p. Pairs with a NaN (an empty response) are left out; None when none is left.

    The median, not the (geometric) mean: one looping or broken response in a minibatch
    can be 10× off in either direction (a loop is very predictable, broken text very
    unlikely), and a bound on the ratio should judge the candidate's typical answer; a
    per-prompt outlier is what the degenerate rate is for.
    """
    if len(steered) != len(reference):
        raise EvaluationError(f"{len(steered)} steered perplexities for {len(reference)} references")
    ratios = [s / r for s, r in zip(steered, reference)
              if s is not None and r is not None and math.isfinite(s) and math.isfinite(r) and r > 0]
    return statistics.median(ratios) if ratios else None
