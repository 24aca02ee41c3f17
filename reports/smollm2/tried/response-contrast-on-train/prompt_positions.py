"""The lowercase answer vector on the prompt's positions only, TRAIN prompts only (nothing held
out is read): the answer is not edited, only the cache it reads. ``lowercase_layers.py`` found
every position looping (25-85 % degenerate where lowercase gains) and the generated positions
alone moving nothing; this is the third choice, at the two layers that moved lowercase most:

    python reports/smollm2/tried/response-contrast-on-train/prompt_positions.py   # ~3 min on 2 CPU cores

Writes ``prompt_positions.json`` and ``prompt_positions.md`` next to this file. What it found
chose the report's diff-means candidate (``Budget.report().answer_layers``: layer 12, prompt
positions).
"""

from __future__ import annotations

from lowercase_layers import probe

RUNS = [(layer, "prompt", (5.0, 7.0, 10.0, 14.0)) for layer in (12, 13)]

if __name__ == "__main__":
    probe(RUNS, "prompt_positions")
