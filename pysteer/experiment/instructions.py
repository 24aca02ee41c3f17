"""The report's six instruction types: what each one says, how it is checked, how it is found.

Each :class:`InstructionType` ties together what the three discovery methods and the
evaluation need for one instruction:

- ``instruction_id``: the IFEval checker that scores it, and the key of its built-in
  prompts (``builtin_prompts("train" | "heldout", [instruction_id])``);
- ``instruction_text``: the phrasing used for the (base, base + instruction) pairs of
  difference in means and for Concise-SAE's follow/violate requests; it is one of the
  phrasings of the built-in prompts, so discovery and evaluation speak the same words;
- ``saif_variants``: SAIF's linguistic variants — a built-in list's name
  (:data:`pysteer.discovery.prompts.VARIANTS`) or our own list;
- ``keyword``: Concise-SAE's one-word summary, appended to the texts it reads.

The variants written here follow the built-in lists' shape (five English rephrasings,
then Spanish, French, German) so SAIF's statistics mean the same across types. The
built-in ``"short"`` list is not used for ``short``: it asks for fewer than 20 words or
one sentence, other constraints than the checked "fewer than 30 words".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

from ..discovery.prompts import VARIANTS
from .errors import ExperimentError

__all__ = ["InstructionType", "INSTRUCTION_TYPES", "TYPE_NAMES", "get_type", "resolve_types"]


@dataclass(frozen=True)
class InstructionType:
    """One instruction of the report (see the module docstring for the fields)."""

    name: str
    instruction_id: str
    instruction_text: str
    saif_variants: Union[str, tuple[str, ...], None]
    keyword: str

    def variants(self) -> Optional[list[str]]:
        """SAIF's variants as a list (None: let SAIF frame ``instruction_text`` itself)."""
        if self.saif_variants is None:
            return None
        if isinstance(self.saif_variants, str):
            return list(VARIANTS[self.saif_variants])
        return list(self.saif_variants)

    def to_json(self) -> dict:
        return {"name": self.name, "instruction_id": self.instruction_id,
                "instruction_text": self.instruction_text, "keyword": self.keyword,
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

INSTRUCTION_TYPES: tuple[InstructionType, ...] = (
    InstructionType("lowercase", "change_case:english_lowercase",
                    "Use only lowercase letters in your response.", "lowercase", "Lowercase"),
    InstructionType("uppercase", "change_case:english_capital",
                    "Respond using only uppercase letters.", "uppercase", "Uppercase"),
    InstructionType("json", "detectable_format:json_format",
                    "Respond only with a JSON object.", "json", "JSON"),
    InstructionType("bullets", "detectable_format:number_bullet_lists",
                    "Give your answer as a list of exactly 3 markdown bullet points.", _BULLETS, "Bullets"),
    InstructionType("no_comma", "punctuation:no_comma",
                    "Write your response without using a single comma.", _NO_COMMA, "Commas"),
    InstructionType("short", "length_constraints:number_words",
                    "Respond in fewer than 30 words.", _SHORT, "Brief"),
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
    """Instruction types from names (None: all six), without duplicates, in the given order."""
    chosen = list(INSTRUCTION_TYPES) if types is None else [get_type(t) for t in types]
    names: Sequence[str] = [t.name for t in chosen]
    if len(set(names)) != len(names):
        raise ExperimentError(f"instruction types repeat: {list(names)}")
    if not chosen:
        raise ExperimentError("no instruction type given")
    return chosen
