"""The benchmark's peers compute what they claim: bench/baselines.py against sae-lens and pysteer.

- ``FullSAEEditing`` on a tiny Llama gives the same layer output as a real sae-lens SAE
  (``use_error_term=True``, edit hooked on ``hook_sae_acts_post``) run on that output,
  and the same logits and greedy tokens as ``pysteer.steer`` on the same features.
- ``DenseHookSteering(v)`` equals pysteer's ``DenseIntervention(v, 1.0, "add")``.
"""

import sys
from pathlib import Path

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is the oracle for these tests")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pysteer  # noqa: E402
from bench.baselines import DenseHookSteering, FullSAEEditing  # noqa: E402
from model_zoo import STEERED_LAYER, WIDTH, left_pad, prompts, tiny_model  # noqa: E402
from pysteer.patching import decoder_layers  # noqa: E402
from sae_lens_zoo import edit_by_hand, random_sae_lens  # noqa: E402

D_SAE = 101  # d_in is the tiny model's width (48); d_sae odd on purpose
FEATURES = [3, 17, 40, 66, 99, 0]
EDITS = ["add", "set", "scale", "ablate", "add", "scale"]
COEFFS = [6.0, 3.0, 2.5, 0.0, -4.0, 0.5]
ARCHITECTURES = [("standard", {}), ("jumprelu", {}), ("topk", {"k": 9})]


def sae_lens_edit_hook(model, sae):
    """A forward hook that replaces the steered layer's output with the sae-lens SAE's output."""
    def edit(acts, hook):
        return edit_by_hand(acts, FEATURES, EDITS, COEFFS)

    sae.hook_sae_acts_post.add_hook(edit)

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = sae(hidden)
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

    return decoder_layers(model)[STEERED_LAYER].register_forward_hook(hook)


def run(model, ids, mask):
    """(logits, the steered layer's output) — captured after any steering of that layer."""
    captured = {}

    def capture(module, args, output):
        captured["out"] = (output[0] if isinstance(output, tuple) else output).clone()

    handle = decoder_layers(model)[STEERED_LAYER].register_forward_hook(capture)
    try:
        with torch.no_grad():
            logits = model(ids, attention_mask=mask).logits
    finally:
        handle.remove()
    return logits, captured["out"]


def greedy(model, ids, mask):
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5,
                             do_sample=False, pad_token_id=0)
    return out[:, ids.shape[1]:]


@pytest.mark.parametrize("architecture,extra", ARCHITECTURES)
def test_full_sae_editing_equals_sae_lens_and_pysteer(architecture, extra):
    model = tiny_model("llama")
    ids, mask = left_pad(prompts())
    lens_sae = random_sae_lens(architecture, WIDTH, D_SAE, seed=len(architecture), weight_std=0.5, **extra)
    ours = pysteer.load_sae(lens_sae)
    plain_logits, plain_out = run(model, ids, mask)

    handle = sae_lens_edit_hook(model, lens_sae)
    try:
        oracle_logits, oracle_out = run(model, ids, mask)
    finally:
        handle.remove()
        lens_sae.reset_hooks()

    with FullSAEEditing(model, STEERED_LAYER, ours, FEATURES, EDITS, COEFFS):
        full_logits, full_out = run(model, ids, mask)
        full_tokens = greedy(model, ids, mask)
    torch.testing.assert_close(full_out, oracle_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full_logits, oracle_logits, rtol=1e-5, atol=1e-5)
    assert (full_out - plain_out).abs().max() > 1e-1  # the edit really did something

    iv = pysteer.SparseIntervention.from_sae(ours, FEATURES, [COEFFS], EDITS, layer=STEERED_LAYER)
    with pysteer.steer(model, pysteer.SteeringSpec([iv])):
        ours_logits, ours_out = run(model, ids, mask)
        ours_tokens = greedy(model, ids, mask)
    # pysteer adds Σ over |S| edited features; the full SAE decodes all d_sae twice and
    # subtracts, so the two round differently at the ~1e-5 level in fp32.
    torch.testing.assert_close(ours_out, full_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours_logits, full_logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(ours_tokens, full_tokens)

    after_logits, _ = run(model, ids, mask)  # detached: the hook is gone
    assert torch.equal(after_logits, plain_logits)


def test_dense_hook_equals_pysteer_dense_add():
    model = tiny_model("llama")
    ids, mask = left_pad(prompts())
    vector = 3.0 * torch.randn(WIDTH, generator=torch.Generator().manual_seed(4))
    plain_logits, plain_out = run(model, ids, mask)
    with DenseHookSteering(model, STEERED_LAYER, vector) as hook:
        hook_logits, hook_out = run(model, ids, mask)
        hook_tokens = greedy(model, ids, mask)
    assert not hook.attached
    torch.testing.assert_close(hook_out, plain_out + vector)
    iv = pysteer.DenseIntervention(STEERED_LAYER, vector, [[1.0]], "add")
    with pysteer.steer(model, pysteer.SteeringSpec([iv])):
        ours_logits, _ = run(model, ids, mask)
        ours_tokens = greedy(model, ids, mask)
    torch.testing.assert_close(ours_logits, hook_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours_tokens, hook_tokens)
    assert not torch.allclose(hook_logits, plain_logits)
    assert torch.equal(run(model, ids, mask)[0], plain_logits)
