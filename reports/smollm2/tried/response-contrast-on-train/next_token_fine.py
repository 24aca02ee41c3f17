"""``next_token.py``'s no-comma vector on a finer strength grid where it turns (between 0.25 and
1, past which most answers loop), at layers 21, 24 and 27 (and 24 on the generated positions); TRAIN prompts only. Layer 27 gained most, so ``--late`` then tries it
at larger strengths and the last layer, 29:

    python reports/smollm2/tried/response-contrast-on-train/next_token_fine.py          # ~6 min on 2 CPU cores
    python reports/smollm2/tried/response-contrast-on-train/next_token_fine.py --late   # ~4 min

Writes ``next_token_fine.json`` / ``.md`` (``next_token_late.json`` / ``.md``) next to this file.
"""

from __future__ import annotations

import sys

from next_token import probe

RUNS = [(layer, "all", (0.375, 0.5, 0.625, 0.75)) for layer in (21, 24, 27)] + [(24, "generated", (0.375, 0.5, 0.625, 0.75))]
LATE = [(27, "all", (1.0, 1.5, 2.0)), (29, "all", (0.5, 0.75, 1.0, 1.5))]

if __name__ == "__main__":
    if sys.argv[1:] == ["--late"]:
        probe(LATE, "next_token_late")
    else:
        probe(RUNS, "next_token_fine")
