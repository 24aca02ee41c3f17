"""The equality check a peer passes before it is timed.

For the same prompts (unpadded token ids [B, T]) and the same rows, compare the peer with
the pysteer row of the same edit:

    tokens   greedy new tokens [B, n] equal (required in fp32)
    logits   max |Δ| over the prompt logits ≤ tol · RMS(pysteer logits), tol 1e-3 (fp32) / 5e-2

and record how far the edit moves the logits from the unsteered model (``edit_effect``),
so a pass cannot come from an edit that does nothing.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 2e-2}


def check_equal(peer_tokens: Tensor, peer_logits: Tensor, ref_tokens: Tensor, ref_logits: Tensor,
                plain_logits: Optional[Tensor], dtype: torch.dtype) -> dict:
    """{check: "pass" | "FAIL: …", tokens_equal, first_token_diff, logits_max_err, logits_tol, edit_effect}."""
    tol = TOLERANCE.get(dtype, 5e-2)
    ref = ref_logits.double()
    scale = ref.square().mean().sqrt().item()
    err = (peer_logits.double() - ref).abs().max().item()
    peer_tokens, ref_tokens = peer_tokens.cpu(), ref_tokens.cpu()
    same = peer_tokens.shape == ref_tokens.shape and torch.equal(peer_tokens, ref_tokens)
    first = None
    if not same and peer_tokens.shape == ref_tokens.shape:
        first = int((peer_tokens != ref_tokens).any(0).nonzero()[0])
    out = {"tokens_equal": same, "first_token_diff": first, "logits_max_err": err,
           "logits_tol": tol * scale, "edit_effect": None}
    if plain_logits is not None:
        out["edit_effect"] = (plain_logits.double() - ref).abs().max().item()
    problems = []
    if not err <= tol * scale:
        problems.append(f"logits differ by {err:.3g} > {tol * scale:.3g}")
    if not same and dtype == torch.float32:
        problems.append(f"greedy tokens differ from step {first}")
    if out["edit_effect"] is not None and out["edit_effect"] <= tol * scale:
        problems.append(f"the edit moves logits by only {out['edit_effect']:.3g} (not a meaningful check)")
    out["check"] = "pass" if not problems else "FAIL: " + "; ".join(problems)
    return out
