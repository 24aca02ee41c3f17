"""Writes ``builtin.jsonl``: pysteer's built-in instruction-following prompts.

Run ``python pysteer/data/prompts/make_builtin.py`` after editing the lists below.
Every prompt is a short general request (the content) followed by one instruction,
as SAIF found post-instruction placement works best. Each of the 9 instruction types
is paired with every base request; the first 20 base requests form the ``train``
split and the last 10 ``heldout``, so no request appears in both splits. Each type has
three phrasings, cycled over the requests (linguistic variants for discovery).

The keyword type asks for one fixed word (:data:`KEYWORD`) in every prompt, so that a
steering vector, which cannot read a per-prompt keyword, can be judged on it; the
French type is IFEval's ``language:response_language`` with ``language="fr"``.
"""

from __future__ import annotations

import json
from pathlib import Path

BASE_REQUESTS = [
    # train
    "Describe the moon.", "Explain how rain forms.", "Tell me about elephants.",
    "Describe a busy city street.", "Explain why people enjoy music.", "Describe your ideal breakfast.",
    "Tell me about the ocean.", "Explain how a bicycle works.", "Describe a winter morning.",
    "Tell me about the history of bread.", "Explain why sleep is important.", "Describe a library.",
    "Tell me about honey bees.", "Explain how plants grow.", "Describe a thunderstorm.",
    "Tell me about the game of chess.", "Explain what a volcano is.", "Describe a walk in the forest.",
    "Tell me about trains.", "Explain why exercise is healthy.",
    # heldout
    "Describe the sun.", "Explain how snow forms.", "Tell me about owls.", "Describe a quiet village.",
    "Explain why people keep pets.", "Describe a summer picnic.", "Tell me about rivers.",
    "Explain how a clock works.", "Describe an autumn evening.", "Tell me about the piano.",
]
N_TRAIN = 20

# A concrete word no base request names, so an unsteered answer rarely holds it by chance.
KEYWORD = "garden"
END_PHRASE = "Is there anything else I can help with?"

# short name -> (instruction id, [(template, kwargs)] phrasings).
TYPES = {
    "lowercase": ("change_case:english_lowercase", [
        ("Your entire response should be in English, and in all lowercase letters. No capital letters are allowed.", {}),
        ("Write your whole answer in lowercase letters only, with no capital letters.", {}),
        ("Use only lowercase letters in your response.", {})]),
    "capitals": ("change_case:english_capital", [
        ("Your entire response should be in English, and in all capital letters.", {}),
        ("Write your whole answer in capital letters only.", {}),
        ("Respond using only uppercase letters.", {})]),
    "json": ("detectable_format:json_format", [
        ("Entire output should be wrapped in JSON format.", {}),
        ("Format your whole answer as valid JSON.", {}),
        ("Respond only with a JSON object.", {})]),
    "bullets": ("detectable_format:number_bullet_lists", [
        ("Your answer must contain exactly 3 bullet points. Use the markdown bullet points such as:\n"
         "* This is point 1.\n* This is point 2", {"num_bullets": 3}),
        ("Answer with exactly 3 bullet points, each on its own line starting with '* '.", {"num_bullets": 3}),
        ("Give your answer as a list of exactly 3 markdown bullet points.", {"num_bullets": 3})]),
    "keyword": ("keywords:existence", [
        (f'Include the keyword "{KEYWORD}" in your response.', {"keywords": [KEYWORD]}),
        (f'Make sure to use the word "{KEYWORD}" in your answer.', {"keywords": [KEYWORD]}),
        (f'Your response must contain the word "{KEYWORD}".', {"keywords": [KEYWORD]})]),
    "no_comma": ("punctuation:no_comma", [
        ("In your entire response, refrain from the use of any commas.", {}),
        ("Do not use any commas in your answer.", {}),
        ("Write your response without using a single comma.", {})]),
    "short": ("length_constraints:number_words", [
        ("Answer with less than 30 words.", {"num_words": 30, "relation": "less than"}),
        ("Keep your response under 30 words.", {"num_words": 30, "relation": "less than"}),
        ("Respond in fewer than 30 words.", {"num_words": 30, "relation": "less than"})]),
    "end_phrase": ("startend:end_checker", [
        (f"Finish your response with this exact phrase: {END_PHRASE} No other words should follow this phrase.",
         {"end_phrase": END_PHRASE}),
        (f'End your answer with the exact sentence "{END_PHRASE}"', {"end_phrase": END_PHRASE}),
        (f"Your response must end with the phrase: {END_PHRASE}", {"end_phrase": END_PHRASE})]),
    "french": ("language:response_language", [
        ("Answer in French only, no other language is allowed.", {"language": "fr"}),
        ("Write your whole answer in French.", {"language": "fr"}),
        ("Your entire response should be in French.", {"language": "fr"})]),
}


def rows() -> list[dict]:
    out = []
    for short, (instruction_id, phrasings) in TYPES.items():
        for index, base in enumerate(BASE_REQUESTS):
            template, kwargs = phrasings[index % len(phrasings)]
            out.append({"key": f"{short}-{index:02d}", "prompt": f"{base} {template}",
                        "base_prompt": base, "instruction_id_list": [instruction_id],
                        "kwargs": [dict(kwargs)],
                        "split": "train" if index < N_TRAIN else "heldout"})
    return out


if __name__ == "__main__":
    path = Path(__file__).with_name("builtin.jsonl")
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows()))
    print(f"wrote {len(rows())} prompts to {path}")
