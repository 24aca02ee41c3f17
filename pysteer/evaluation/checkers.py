"""Verifiable instruction checkers, IFEval style, with strict and loose scoring.

``INSTRUCTIONS`` maps an IFEval instruction id to a function ``check(response, **kwargs)
-> bool``; :func:`check_instruction` is the one entry point (it also reaches IFBench's
checkers, see :mod:`pysteer.evaluation.ifbench`). The semantics follow IFEval's
reference implementation (Zhou et al. 2023, ``instructions.py``): the same regular
expressions, relations ``"less than"`` (``<``) and ``"at least"`` (``>=``), and an empty
response never follows anything. Differences, all documented at the checker:
sentences are split by :func:`pysteer.evaluation.text.split_sentences`, capital words
are counted on ``\\w+`` tokens (IFEval uses NLTK's tokenizer, which needs a download),
and the response language comes from :func:`pysteer.evaluation.text.detect_language`.
``startend:start_checker`` is pysteer's own (IFEval has only ``end_checker``).

Loose scoring (IFEval's upper bound): an instruction is followed if any of 8 variants
of the response follows it — the response, without its first line, without its last
line, without both, and each of those four with every ``*`` removed.
"""

from __future__ import annotations

import collections
import difflib
import inspect
import json
import re
from typing import Any, Callable, Optional

from .errors import EvaluationError
from .text import count_sentences, count_words, detect_language, words

Checker = Callable[..., bool]
INSTRUCTIONS: dict[str, Checker] = {}
RELATIONS = ("less than", "at least")


def _register(instruction_id: str) -> Callable[[Checker], Checker]:
    def wrap(fn: Checker) -> Checker:
        INSTRUCTIONS[instruction_id] = fn
        return fn
    return wrap


def _count(value: Any, name: str) -> int:
    """Counts arrive as int, float (IFBench's JSON writes 5.0) or digit strings."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise EvaluationError(f"argument {name}={value!r} must be a number") from None
    if number != int(number):
        raise EvaluationError(f"argument {name}={value!r} must be a whole number")
    return int(number)


def _compare(actual: int, relation: str, target: Any, name: str) -> bool:
    if relation not in RELATIONS:
        raise EvaluationError(f"relation {relation!r} for {name} must be one of {RELATIONS}")
    target = _count(target, name)
    return actual < target if relation == "less than" else actual >= target


def _word_list(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise EvaluationError(f"argument {name}={value!r} must be a list of strings")
    return list(value)


# --- change of case ---------------------------------------------------------------

def _english_or_unknown(text: str) -> bool:
    # IFEval: langdetect == "en", and text it cannot classify passes.
    return detect_language(text) in ("en", None)


@_register("change_case:english_lowercase")
def english_lowercase(response: str) -> bool:
    """The whole response is lowercase (``str.islower``) and English."""
    return response.islower() and _english_or_unknown(response)


@_register("change_case:english_capital")
def english_capital(response: str) -> bool:
    """The whole response is in capitals (``str.isupper``) and English."""
    return response.isupper() and _english_or_unknown(response)


@_register("change_case:capital_word_frequency")
def capital_word_frequency(response: str, capital_frequency: Any, capital_relation: str) -> bool:
    """#words written all in capitals  <  or  >=  capital_frequency."""
    capitals = [w for w in words(response) if w.isupper()]
    return _compare(len(capitals), capital_relation, capital_frequency, "capital_frequency")


# --- formats ------------------------------------------------------------------------

@_register("detectable_format:json_format")
def json_format(response: str) -> bool:
    """The response (optionally fenced in ```json ... ```) parses as JSON."""
    value = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        value = value.removeprefix(fence)
    value = value.removesuffix("```").strip()
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


@_register("detectable_format:number_bullet_lists")
def number_bullet_lists(response: str, num_bullets: Any) -> bool:
    """Exactly num_bullets markdown bullets (lines starting with ``* `` or ``-``)."""
    stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes) == _count(num_bullets, "num_bullets")


@_register("detectable_format:multiple_sections")
def multiple_sections(response: str, section_spliter: str, num_sections: Any) -> bool:
    """At least num_sections sections, each opened by ``<section_spliter> <number>``."""
    pattern = r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?"
    return len(re.split(pattern, response)) - 1 >= _count(num_sections, "num_sections")


@_register("detectable_format:title")
def title(response: str) -> bool:
    """A non-empty title in double angular brackets, ``<<like this>>``."""
    titles = re.findall(r"<<[^\n]+>>", response)
    return any(t.lstrip("<").rstrip(">").strip() for t in titles)


@_register("detectable_format:number_highlighted_sections")
def number_highlighted_sections(response: str, num_highlights: Any) -> bool:
    """At least num_highlights non-empty ``*highlighted*`` (or ``**bold**``) spans."""
    spans = re.findall(r"\*[^\n\*]*\*", response) + re.findall(r"\*\*[^\n\*]*\*\*", response)
    return sum(bool(s.strip("*").strip()) for s in spans) >= _count(num_highlights, "num_highlights")


@_register("detectable_format:constrained_response")
def constrained_response(response: str) -> bool:
    """Contains one of "My answer is yes.", "My answer is no.", "My answer is maybe."."""
    return any(option in response.strip() for option in
               ("My answer is yes.", "My answer is no.", "My answer is maybe."))


@_register("combination:two_responses")
def two_responses(response: str) -> bool:
    """Exactly two different non-empty responses separated by ``******``."""
    parts = response.split("******")
    kept = []
    for index, part in enumerate(parts):
        if not part.strip():
            if index not in (0, len(parts) - 1):
                return False
        else:
            kept.append(part)
    return len(kept) == 2 and kept[0].strip() != kept[1].strip()


@_register("combination:repeat_prompt")
def repeat_prompt(response: str, prompt_to_repeat: str) -> bool:
    """Starts by repeating prompt_to_repeat (case-insensitive)."""
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


# --- language ---------------------------------------------------------------------

@_register("language:response_language")
def response_language(response: str, language: str) -> bool:
    """Written in ``language`` (ISO 639-1); undetectable text passes, as in IFEval."""
    detected = detect_language(response)
    return detected is None or detected == language


# --- length -------------------------------------------------------------------------

@_register("length_constraints:number_sentences")
def number_sentences(response: str, num_sentences: Any, relation: str) -> bool:
    """#sentences  <  or  >=  num_sentences."""
    return _compare(count_sentences(response), relation, num_sentences, "num_sentences")


@_register("length_constraints:number_words")
def number_words(response: str, num_words: Any, relation: str) -> bool:
    """#words (``\\w+`` runs)  <  or  >=  num_words."""
    return _compare(count_words(response), relation, num_words, "num_words")


@_register("length_constraints:number_paragraphs")
def number_paragraphs(response: str, num_paragraphs: Any) -> bool:
    """Exactly num_paragraphs paragraphs separated by the markdown divider ``***``."""
    paragraphs = re.split(r"\s?\*\*\*\s?", response)
    count = len(paragraphs)
    for index, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if index in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False
    return count == _count(num_paragraphs, "num_paragraphs")


@_register("length_constraints:nth_paragraph_first_word")
def nth_paragraph_first_word(response: str, num_paragraphs: Any, nth_paragraph: Any,
                             first_word: str) -> bool:
    """num_paragraphs paragraphs (split by blank lines); the nth starts with first_word."""
    paragraphs = re.split(r"\n\n", response)
    count = sum(bool(p.strip()) for p in paragraphs)
    nth = _count(nth_paragraph, "nth_paragraph")
    if not 1 <= nth <= len(paragraphs):
        return False
    paragraph = paragraphs[nth - 1].strip()
    if not paragraph:
        return False
    first = paragraph.split()[0].strip().lstrip("'\"")
    first = re.sub(r"[.,?!'\"]", "", first).lower()
    return first == first_word.lower() and count == _count(num_paragraphs, "num_paragraphs")


# --- keywords -------------------------------------------------------------------------

@_register("keywords:existence")
def keywords_existence(response: str, keywords: Any) -> bool:
    """Every keyword occurs (case-insensitive; as a regular expression, as in IFEval)."""
    return all(re.search(k, response, flags=re.IGNORECASE) for k in _word_list(keywords, "keywords"))


@_register("keywords:frequency")
def keywords_frequency(response: str, keyword: str, frequency: Any, relation: str) -> bool:
    """#occurrences of keyword (case-insensitive)  <  or  >=  frequency."""
    found = len(re.findall(keyword, response, flags=re.IGNORECASE))
    return _compare(found, relation, frequency, "frequency")


@_register("keywords:forbidden_words")
def forbidden_words(response: str, forbidden_words: Any) -> bool:
    """None of forbidden_words occurs as a whole word (case-insensitive)."""
    return not any(re.search(r"\b" + re.escape(w) + r"\b", response, flags=re.IGNORECASE)
                   for w in _word_list(forbidden_words, "forbidden_words"))


@_register("keywords:letter_frequency")
def letter_frequency(response: str, letter: str, let_frequency: Any, let_relation: str) -> bool:
    """#occurrences of ``letter`` (case-insensitive)  <  or  >=  let_frequency."""
    if not isinstance(letter, str) or len(letter) != 1:
        raise EvaluationError(f"argument letter={letter!r} must be a single character")
    found = collections.Counter(response.lower())[letter.lower()]
    return _compare(found, let_relation, let_frequency, "let_frequency")


# --- punctuation, start / end, quotation, content --------------------------------------

@_register("punctuation:no_comma")
def no_comma(response: str) -> bool:
    """No comma anywhere."""
    return "," not in response


@_register("startend:end_checker")
def end_checker(response: str, end_phrase: str) -> bool:
    """Ends with end_phrase (case-insensitive; surrounding space and quotes ignored)."""
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


@_register("startend:start_checker")
def start_checker(response: str, start_phrase: str) -> bool:
    """Starts with start_phrase (case-insensitive; pysteer's mirror of end_checker)."""
    return response.strip().strip('"').lower().startswith(start_phrase.strip().lower())


@_register("startend:quotation")
def quotation(response: str) -> bool:
    """The whole response is wrapped in double quotes."""
    value = response.strip()
    return len(value) > 1 and value[0] == '"' and value[-1] == '"'


@_register("detectable_content:postscript")
def postscript(response: str, postscript_marker: str) -> bool:
    """A postscript starting with postscript_marker (``P.S.``, ``P.P.S`` or any marker)."""
    value = response.lower()
    if postscript_marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif postscript_marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(postscript_marker.lower()) + r".*$"
    return bool(re.findall(pattern, value, flags=re.MULTILINE))


@_register("detectable_content:number_placeholders")
def number_placeholders(response: str, num_placeholders: Any) -> bool:
    """At least num_placeholders ``[placeholders]``."""
    return len(re.findall(r"\[.*?\]", response)) >= _count(num_placeholders, "num_placeholders")


# --- entry point ------------------------------------------------------------------------

def loose_variants(response: str) -> list[str]:
    """IFEval's 8 loose variants: first/last/both lines removed, each with and without ``*``."""
    lines = response.split("\n")
    trimmed = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(),
               "\n".join(lines[1:-1]).strip()]
    return trimmed + [t.replace("*", "") for t in trimmed]


def _bind(instruction_id: str, fn: Checker, kwargs: dict) -> dict:
    params = inspect.signature(fn).parameters
    accepted = [name for name in params if name != "response"]
    unknown = sorted(set(kwargs) - set(accepted))
    missing = [name for name, p in params.items()
               if name != "response" and p.default is p.empty and name not in kwargs]
    if unknown or missing:
        problem = (f"unknown argument(s) {unknown}" if unknown else "") + \
                  ("; " if unknown and missing else "") + (f"missing {missing}" if missing else "")
        raise EvaluationError(f"{instruction_id}: {problem} (it takes {accepted or 'no arguments'})")
    return kwargs


def is_known(instruction_id: str) -> bool:
    """Whether ``instruction_id`` names a pysteer (IFEval) or IFBench checker."""
    from .ifbench import ifbench_instruction_ids
    return instruction_id in INSTRUCTIONS or instruction_id in ifbench_instruction_ids()


def check_instruction(instruction_id: str, kwargs: Optional[dict], response: str, *,
                      prompt: Optional[str] = None, loose: bool = False) -> bool:
    """Whether ``response`` follows one instruction.

    ``kwargs`` are the checker's arguments (``None`` values are dropped, as IFEval's
    JSONL pads every kwargs dict with nulls); ``prompt`` is passed to checkers that
    need the prompt (IFBench's). ``loose`` tries the 8 variants of :func:`loose_variants`.
    An empty (or whitespace-only) response never follows an instruction.
    """
    if not isinstance(response, str):
        raise EvaluationError(f"{instruction_id}: the response must be a str, got {type(response).__name__}")
    kwargs = {k: v for k, v in (kwargs or {}).items() if v is not None}
    candidates = loose_variants(response) if loose else [response]
    if instruction_id in INSTRUCTIONS:
        fn = INSTRUCTIONS[instruction_id]
        kwargs = _bind(instruction_id, fn, kwargs)
        return any(c.strip() and fn(c, **kwargs) for c in candidates)
    from .ifbench import check_ifbench, ifbench_instruction_ids
    if instruction_id in ifbench_instruction_ids():
        return any(c.strip() and check_ifbench(instruction_id, kwargs, c, prompt=prompt)
                   for c in candidates)
    close = difflib.get_close_matches(instruction_id, list(INSTRUCTIONS) + sorted(ifbench_instruction_ids()), n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise EvaluationError(f"unknown instruction id {instruction_id!r}{hint} "
                          f"(pysteer checks {len(INSTRUCTIONS)} IFEval ids and IFBench's)")
