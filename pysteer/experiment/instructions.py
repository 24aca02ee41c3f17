"""The report's instruction types: what each one says, how it is checked, how it is found.

Six formatting types (case, JSON, bullets, commas, length) and two content types the
model follows when told: a response language (``french``: IFEval's
``language:response_language`` with ``language="fr"``) and a keyword to include
(``keyword``: ``keywords:existence`` with the one fixed word ``"garden"``, so a steering
vector, which cannot read a per-prompt word, can be judged on it).

Each :class:`InstructionType` ties together what the three discovery methods and the
evaluation need for one instruction:

- ``instruction_id``: the IFEval checker that scores it, and the key of its built-in
  prompts (``builtin_prompts("train" | "heldout", [instruction_id])``: 20 train and 10
  held-out requests each; the checker's arguments, e.g. ``{"language": "fr"}``, come
  with every prompt);
- ``instruction_text``: the phrasing used for the (base, base + instruction) pairs of
  difference in means and for Concise-SAE's follow/violate requests; it is one of the
  phrasings of the built-in prompts, so discovery and evaluation speak the same words;
- ``saif_variants``: SAIF's linguistic variants — a built-in list's name
  (:data:`pysteer.discovery.prompts.VARIANTS`) or our own list;
- ``keyword``: Concise-SAE's one-word summary, appended to the texts it reads;
- ``rewrite``: where there is one, the name of a rule in :data:`REWRITES` that makes any
  answer comply while keeping its words (lowercase, uppercase, no commas); difference in
  means also reads its vector from the model's answers against their rewrites
  (:func:`pysteer.discovery.answer_vectors`). Formats and content (JSON, bullets, length,
  French, a keyword) have no such rule: rewriting them is writing a new answer;
- ``forbidden``: where the instruction forbids tokens, the name of a test in
  :data:`FORBIDDEN_TOKENS` of one decoded token (no commas: it holds a comma); difference
  in means also reads its vector where the model's next token is forbidden
  (:func:`pysteer.discovery.next_token_vectors`).

The variants written here follow the built-in lists' shape (five English rephrasings,
then Spanish, French, German) so SAIF's statistics mean the same across types; the
keyword's translations keep the English word, since the checker looks for it. The
built-in ``"short"`` list is not used for ``short``: it asks for fewer than 20 words or
one sentence, other constraints than the checked "fewer than 30 words".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple, Optional, Sequence, Union

from ..discovery.prompts import VARIANTS
from .errors import ExperimentError

__all__ = ["InstructionType", "INSTRUCTION_TYPES", "REWRITES", "FORBIDDEN_TOKENS", "TYPE_NAMES", "get_type", "resolve_types", "Instruction",
           "BUILTIN_NAMES", "INSTRUCTION_RULE", "resolve_instruction"]


REWRITES: dict[str, Callable[[str], str]] = {
    "lower": str.lower,
    "upper": str.upper,
    "drop_commas": lambda text: text.replace(",", ""),
}

FORBIDDEN_TOKENS: dict[str, Callable[[str], bool]] = {
    "comma": lambda piece: "," in piece,
}


@dataclass(frozen=True)
class InstructionType:
    """One instruction of the report (see the module docstring for the fields)."""

    name: str
    instruction_id: str
    instruction_text: str
    saif_variants: Union[str, tuple[str, ...], None]
    keyword: str
    rewrite: Optional[str] = None
    forbidden: Optional[str] = None

    def __post_init__(self) -> None:
        if self.rewrite is not None and self.rewrite not in REWRITES:
            raise ExperimentError(f"type {self.name}: unknown rewrite {self.rewrite!r}; the rewrites are "
                                  f"{', '.join(REWRITES)}")
        if self.forbidden is not None and self.forbidden not in FORBIDDEN_TOKENS:
            raise ExperimentError(f"type {self.name}: unknown forbidden token test {self.forbidden!r}; the "
                                  f"tests are {', '.join(FORBIDDEN_TOKENS)}")

    def rewrite_answer(self, text: str) -> str:
        """``text`` made to comply by the type's rewrite rule."""
        if self.rewrite is None:
            raise ExperimentError(f"type {self.name} has no rewrite rule")
        return REWRITES[self.rewrite](text)

    def forbids(self, piece: str) -> bool:
        """Whether the decoded token ``piece`` breaks the instruction (its forbidden-token test)."""
        if self.forbidden is None:
            raise ExperimentError(f"type {self.name} forbids no tokens")
        return FORBIDDEN_TOKENS[self.forbidden](piece)

    def variants(self) -> Optional[list[str]]:
        """SAIF's variants as a list (None: let SAIF frame ``instruction_text`` itself)."""
        if self.saif_variants is None:
            return None
        if isinstance(self.saif_variants, str):
            return list(VARIANTS[self.saif_variants])
        return list(self.saif_variants)

    def to_json(self) -> dict:
        return {"name": self.name, "instruction_id": self.instruction_id,
                "instruction_text": self.instruction_text, "keyword": self.keyword, "rewrite": self.rewrite,
                "forbidden": self.forbidden,
                "saif_variants": self.saif_variants if isinstance(self.saif_variants, str)
                else self.variants()}


_BULLETS = (
    "Answer with a markdown list of exactly three bullet points.",
    "Format your reply as exactly 3 bullet points.",
    "Use exactly three markdown bullets, nothing else.",
    "Write your answer as three bullet points starting with '* '.",
    "Structure the whole answer as a list of 3 bullets.",
    "Responde con una lista de exactamente tres viñetas.",
    "Réponds sous forme de liste de exactement trois puces.",
    "Antworte mit einer Liste aus genau drei Aufzählungspunkten.",
)
_NO_COMMA = (
    "Do not use any commas in your answer.",
    "Avoid commas entirely.",
    "Your reply must contain no commas at all.",
    "Write without a single comma anywhere.",
    "Never use the comma character in your response.",
    "No uses ninguna coma en tu respuesta.",
    "N'utilise aucune virgule dans ta réponse.",
    "Verwende in deiner Antwort kein einziges Komma.",
)
_SHORT = (
    "Keep your answer under 30 words.",
    "Use fewer than thirty words.",
    "Answer briefly, in less than 30 words.",
    "Your whole reply must stay below 30 words.",
    "Be concise: no more than 29 words.",
    "Responde en menos de 30 palabras.",
    "Réponds en moins de 30 mots.",
    "Antworte in weniger als 30 Wörtern.",
)
_KEYWORD = (
    'Include the keyword "garden" in your response.',
    'Make sure to use the word "garden" in your answer.',
    'Your response must contain the word "garden".',
    'Use the word "garden" at least once in your reply.',
    'Somewhere in your answer, write the word "garden".',
    'Incluye la palabra "garden" en tu respuesta.',
    'Utilise le mot "garden" dans ta réponse.',
    'Verwende das Wort "garden" in deiner Antwort.',
)

INSTRUCTION_TYPES: tuple[InstructionType, ...] = (
    InstructionType("lowercase", "change_case:english_lowercase",
                    "Use only lowercase letters in your response.", "lowercase", "Lowercase", "lower"),
    InstructionType("uppercase", "change_case:english_capital",
                    "Respond using only uppercase letters.", "uppercase", "Uppercase", "upper"),
    InstructionType("json", "detectable_format:json_format",
                    "Respond only with a JSON object.", "json", "JSON"),
    InstructionType("bullets", "detectable_format:number_bullet_lists",
                    "Give your answer as a list of exactly 3 markdown bullet points.", _BULLETS, "Bullets"),
    InstructionType("no_comma", "punctuation:no_comma",
                    "Write your response without using a single comma.", _NO_COMMA, "Commas", "drop_commas",
                    "comma"),
    InstructionType("short", "length_constraints:number_words",
                    "Respond in fewer than 30 words.", _SHORT, "Brief"),
    InstructionType("french", "language:response_language",
                    "Your entire response should be in French.", "french", "French"),
    InstructionType("keyword", "keywords:existence",
                    'Your response must contain the word "garden".', _KEYWORD, "Garden"),
)
TYPE_NAMES: tuple[str, ...] = tuple(t.name for t in INSTRUCTION_TYPES)


def get_type(name: "str | InstructionType") -> InstructionType:
    """The instruction type called ``name`` (an :class:`InstructionType` passes through)."""
    if isinstance(name, InstructionType):
        return name
    for itype in INSTRUCTION_TYPES:
        if itype.name == name:
            return itype
    raise ExperimentError(f"unknown instruction type {name!r}; the report's types are {', '.join(TYPE_NAMES)}")


def resolve_types(types: "Optional[Iterable[str | InstructionType]]") -> list[InstructionType]:
    """Instruction types from names (None: all of them), without duplicates, in the given order."""
    chosen = list(INSTRUCTION_TYPES) if types is None else [get_type(t) for t in types]
    names: Sequence[str] = [t.name for t in chosen]
    if len(set(names)) != len(names):
        raise ExperimentError(f"instruction types repeat: {list(names)}")
    if not chosen:
        raise ExperimentError("no instruction type given")
    return chosen


# ---------------------------------------------------------------------------- --instruction
class Instruction(NamedTuple):
    """What a command needs of an instruction: its text, and for a built-in one the rest."""

    text: str
    name: Optional[str] = None                    # the built-in name; None for the user's own text
    variants: Optional[tuple[str, ...]] = None    # SAIF's variants (None: frames around ``text``)
    keyword: Optional[str] = None                 # Concise-SAE's keyword
    instruction_id: Optional[str] = None          # the checker scoring it, where there is one


# The report's types first; then the discovery variant lists that are no type (none today:
# "french" became one).
BUILTIN_NAMES: tuple[str, ...] = TYPE_NAMES + tuple(name for name in VARIANTS if name not in TYPE_NAMES)
INSTRUCTION_RULE = (f"a built-in name ({', '.join(BUILTIN_NAMES)}; any case) or a type's checker id "
                    f"(e.g. {INSTRUCTION_TYPES[0].instruction_id}) stands for that instruction")


def resolve_instruction(value: str) -> Instruction:
    """The one meaning of ``--instruction`` in every command: :data:`INSTRUCTION_RULE`;
    any other value is the instruction's own text (returned stripped).

    A name of the report's types (:data:`INSTRUCTION_TYPES`) gives that type's text,
    SAIF variants, keyword and checker; a discovery variant list's name that is no type
    gives its first phrasing as the text, the list as the variants and the
    capitalised name as the keyword, as SAIF and Concise-SAE read such a name.
    """
    key = value.strip().lower()
    for itype in INSTRUCTION_TYPES:
        if key in (itype.name, itype.instruction_id):
            variants = itype.variants()
            return Instruction(itype.instruction_text, itype.name, tuple(variants) if variants else None,
                               itype.keyword, itype.instruction_id)
    if key in VARIANTS:
        return Instruction(VARIANTS[key][0], key, tuple(VARIANTS[key]), key.capitalize())
    return Instruction(value.strip())
