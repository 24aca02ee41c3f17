"""Built-in prompt material for discovery: base queries, instruction variants, pair templates.

Small and deterministic on purpose; every discovery function also takes the user's own.
"""

from __future__ import annotations

import random
from typing import Optional, Sequence

# Short open-ended requests (Stolfo et al. steer on base queries without the instruction).
BASE_QUERIES = [
    "Describe the sea.", "Write a short story about a lost key.", "Explain how rain forms.",
    "Give advice to a new student.", "Describe your favourite season.", "Explain what a computer does.",
    "Write a note to a neighbour about a party.", "Describe a busy market.",
    "Describe a quiet harbour.", "Write a product description for a water bottle.",
    "Describe a walk in the forest.", "Explain how to make tea.", "Tell me about the moon.",
    "Write a short poem about trains.", "Describe a city at night.", "Explain what friendship means.",
    "Give tips for saving money.", "Describe the taste of an orange.", "Write a letter to a friend.",
    "Explain how plants grow.", "Describe a mountain village.", "Write a review of a small cafe.",
    "Explain why sleep is important.", "Describe a rainy afternoon.", "Tell me about bicycles.",
    "Write an invitation to a picnic.", "Explain how bees make honey.", "Describe an old library.",
    "Give advice for a job interview.", "Describe the first day of spring.",
]

# Topics for the texts the model writes about itself (Concise-SAE pairs).
TOPICS = ["the ocean", "a train journey", "cooking dinner", "a football match", "winter",
          "a small town", "learning to swim", "the night sky", "a birthday party", "gardening",
          "a rainy day", "an old friend", "the mountains", "a library", "a new job", "coffee"]

# Rephrasings and translations for instructions SAIF studies; keys are short names.
VARIANTS = {
    "lowercase": [
        "Your entire response should be in lowercase letters.",
        "Write everything in lowercase, with no capital letters.",
        "Use only lowercase letters in your answer.",
        "Do not use any capital letters.",
        "Respond in all lowercase.",
        "Toda tu respuesta debe estar en letras minúsculas.",
        "Ta réponse entière doit être en lettres minuscules.",
        "Deine gesamte Antwort sollte in Kleinbuchstaben sein.",
    ],
    "uppercase": [
        "Your entire response should be in English, capital letters only.",
        "Write everything in uppercase letters.",
        "Use only capital letters in your answer.",
        "Respond in all caps.",
        "Make your whole answer uppercase.",
        "Toda tu respuesta debe estar en letras mayúsculas.",
        "Ta réponse entière doit être en lettres majuscules.",
        "Deine gesamte Antwort sollte in Großbuchstaben sein.",
    ],
    "json": [
        "Wrap your entire output in JSON format.",
        "Format your whole answer as valid JSON.",
        "Respond only with a JSON object.",
        "Your output must be JSON.",
        "Return the answer as JSON.",
        "Responde únicamente en formato JSON.",
        "Réponds uniquement au format JSON.",
        "Antworte ausschließlich im JSON-Format.",
    ],
    "french": [
        "Your entire response should be in French.",
        "Answer in French.",
        "Write your reply in the French language.",
        "Respond only in French, no other language.",
        "Please use French for your answer.",
        "Responde en francés.",
        "Réponds en français.",
        "Antworte auf Französisch.",
    ],
    "short": [
        "Answer in fewer than 20 words.",
        "Keep your response very short.",
        "Be brief: one sentence at most.",
        "Respond as concisely as possible.",
        "Give a short answer.",
        "Responde de forma muy breve.",
        "Réponds très brièvement.",
        "Antworte sehr kurz.",
    ],
}

# Frames for an arbitrary instruction without a built-in variant list: rephrasing
# scaffolds in English and a few other languages (the instruction text is kept as given).
VARIANT_FRAMES = [
    "{instruction}", "Instruction: {instruction}", "Please follow this rule: {instruction}",
    "Important: {instruction}", "Make sure that you follow this: {instruction}",
    "Remember: {instruction}", "Requirement — {instruction}", "Note the constraint: {instruction}",
    "Instrucción: {instruction}", "Consigne : {instruction}", "Anweisung: {instruction}",
    "Istruzione: {instruction}",
]

FOLLOW_TEMPLATE = "Write a short text about {topic} that follows the instruction: {instruction}"
VIOLATE_TEMPLATE = ("Write a short text about {topic} that ignores the instruction: {instruction} "
                    "Do the opposite of what it asks.")


def with_instruction(base: str, instruction: str, placement: str = "after") -> str:
    """``base`` with ``instruction`` after it (SAIF's better placement) or before it."""
    if placement == "after":
        return f"{base}\n{instruction}"
    if placement == "before":
        return f"{instruction}\n{base}"
    raise ValueError(f"placement must be 'after' or 'before', got {placement!r}")


def instruction_variants(instruction: str, variants: Optional[Sequence[str]] = None,
                         n: Optional[int] = None) -> list[str]:
    """Linguistic variants of one instruction: ``variants`` if given, a built-in list when
    ``instruction`` names one (``"lowercase"``, ``"json"``, ...), else the frames above."""
    if variants is not None:
        out = [v for v in variants if v.strip()]
        if not out:
            raise ValueError("variants is empty")
    elif instruction.strip().lower() in VARIANTS:
        out = list(VARIANTS[instruction.strip().lower()])
    else:
        out = [frame.format(instruction=instruction.strip()) for frame in VARIANT_FRAMES]
    return out[:n] if n else out


def sample(items: Sequence[str], n: Optional[int], seed: int = 0) -> list[str]:
    """``n`` items (all when ``n`` is None); cycles through a seeded shuffle when n > len."""
    items = list(items)
    if n is None:
        return items
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        block = items[:]
        rng.shuffle(block)
        out.extend(block)
    return out[:n]
