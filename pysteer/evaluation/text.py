"""Text measurements the checkers share: words, sentences, paragraphs, response language.

Everything here is plain Python and offline. Language detection uses ``langdetect``
when it is installed (seeded, so results repeat) and otherwise a stop-word detector
for English, French, German, Spanish, Italian and Portuguese:

    score(lang) = #{word tokens in STOP_WORDS[lang]} / #{word tokens}
    language    = argmax score,   or None when no language scores ≥ 0.1 or two tie

IFEval treats text whose language cannot be detected as passing; so do we (``None``).
"""

from __future__ import annotations

import re
from typing import Optional

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    """Word tokens as IFEval counts them (runs of ``\\w``: "don't" is two words)."""
    return _WORD.findall(text)


def count_words(text: str) -> int:
    return len(words(text))


# Full stops that do not end a sentence: titles, initials, decimals, common abbreviations.
_NOT_A_STOP = [
    (re.compile(r"\b(Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|Inc|Ltd|vs|etc|approx)\.", re.IGNORECASE), r"\1<prd>"),
    (re.compile(r"\b(e)\.(g)\.", re.IGNORECASE), r"\1<prd>\2<prd>"),
    (re.compile(r"\b(i)\.(e)\.", re.IGNORECASE), r"\1<prd>\2<prd>"),
    (re.compile(r"(\d)\.(\d)"), r"\1<prd>\2"),
    (re.compile(r"\b([A-Z])\.(?=\s*[A-Z]\.)"), r"\1<prd>"),       # initials: J. R. R. Tolkien
    (re.compile(r"\.(com|org|net|io|gov|edu)\b"), r"<prd>\1"),
]
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+|\.{3,}\s*")


def split_sentences(text: str) -> list[str]:
    """Sentences: split after ``.``, ``!`` or ``?`` (and a closing quote/bracket) plus space.

    Like IFEval's splitter, line breaks alone do not end a sentence, and titles,
    initials, decimals and e.g./i.e. do not either. Empty pieces are dropped.
    """
    text = " ".join(text.split())
    for pattern, replacement in _NOT_A_STOP:
        text = pattern.sub(replacement, text)
    pieces = _SENTENCE_END.split(text)
    return [p.replace("<prd>", ".").strip() for p in pieces if p and p.strip()]


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


STOP_WORDS: dict[str, frozenset[str]] = {
    "en": frozenset("the a an and or but of to in on at for with is are was were be been it this that "
                    "these those i you he she we they my your his her our their not no do does did "
                    "have has had will would can could should from by as if so what which who there "
                    "here about into than then very also just".split()),
    "fr": frozenset("le la les un une des et ou mais de du au aux en dans sur pour avec est sont était "
                    "être ce cette ces je tu il elle nous vous ils elles mon ton son notre votre leur "
                    "ne pas que qui quoi dont où se sa ses très aussi plus comme par".split()),
    "de": frozenset("der die das den dem des ein eine einer eines einem und oder aber von zu im in auf "
                    "für mit ist sind war waren sein es dies diese ich du er sie wir ihr mein dein "
                    "nicht kein keine auch sehr wie was wer wo dass sich bei aus nach noch nur".split()),
    "es": frozenset("el la los las un una unos unas y o pero de del al en con por para es son era "
                    "fueron ser esto esta este estos estas yo tú él ella nosotros vosotros ellos mi "
                    "tu su nuestro no que qué quien donde muy también más como se lo le".split()),
    "it": frozenset("il lo la i gli le un uno una e o ma di del della dei delle al alla in con per è "
                    "sono era erano essere questo questa questi queste io tu lui lei noi voi loro mio "
                    "tuo suo nostro non che chi dove molto anche più come si ci".split()),
    "pt": frozenset("o a os as um uma uns umas e ou mas de do da dos das ao em no na nos nas com por "
                    "para é são era foram ser isto esta este estes estas eu tu ele ela nós vós eles "
                    "meu teu seu nosso não que quem onde muito também mais como se lhe".split()),
}


def stopword_language(text: str, min_score: float = 0.1) -> Optional[str]:
    """ISO 639-1 code of the best-scoring stop-word list, or None (see the module docstring)."""
    tokens = [w.lower() for w in words(text) if not w.isdigit()]
    if not tokens:
        return None
    scores = {lang: sum(t in stop for t in tokens) / len(tokens) for lang, stop in STOP_WORDS.items()}
    ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)
    (best, top), (_, second) = ranked[0], ranked[1]
    if top < min_score or top == second:
        return None
    return best


def detect_language(text: str) -> Optional[str]:
    """ISO 639-1 code of ``text``'s language, or None when it cannot be told.

    ``langdetect`` (seeded) when importable; else :func:`stopword_language`.
    """
    try:
        from langdetect import DetectorFactory, LangDetectException, detect
    except ImportError:
        return stopword_language(text)
    DetectorFactory.seed = 0  # langdetect samples; a fixed seed makes verdicts repeatable
    try:
        return detect(text)
    except LangDetectException:
        return None
