"""pysteer's sparse edit equals sae-lens running the *full* SAE with the same edit.

sae-lens is the oracle: it encodes all d_sae features, a hook edits
``hook_sae_acts_post``, it decodes, and ``use_error_term=True`` adds back the clean
reconstruction error. pysteer encodes only the selected features. The two must agree
to fp32 tolerance, for every architecture and every edit mode.
"""

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is the oracle for these tests")

from pysteer import FeatureEdit, SparseIntervention, load_sae  # noqa: E402
from sae_lens_zoo import edit_by_hand, random_sae_lens  # noqa: E402
from pysteer.patching.steered_layer import ForwardPlan, compile_intervention  # noqa: E402

D_IN, D_SAE = 37, 101  # odd on purpose
FEATURES = [3, 17, 40, 41, 99, 0]
EDITS = ["add", "set", "scale", "ablate", "add", "scale"]


def _oracle(sae, x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    sae.hook_sae_acts_post.add_hook(lambda acts, hook: edit_by_hand(acts, FEATURES, EDITS, coeffs))
    try:
        with torch.no_grad():
            return sae(x)
    finally:
        sae.reset_hooks()


@pytest.mark.parametrize("architecture,extra", [
    ("standard", {}),
    ("standard", {"apply_b_dec_to_input": False}),
    ("jumprelu", {}),
    ("topk", {"k": 9}),
    ("topk", {"k": 9, "rescale_acts_by_decoder_norm": True}),
])
def test_sparse_edit_equals_sae_lens_full_sae(architecture, extra):
    sae = random_sae_lens(architecture, D_IN, D_SAE, seed=len(extra) + len(architecture), **extra)
    x = torch.randn(23, D_IN) * 2.0
    coeffs = torch.tensor([[1.5, -0.7, 2.0, 0.0, 0.3, -1.0]])
    expected = _oracle(sae, x, coeffs[0])

    ours = load_sae(sae)  # the live sae_lens.SAE object
    iv = SparseIntervention.from_sae(ours, FEATURES, coeffs, EDITS, layer=0)
    compiled = compile_intervention(iv, torch.device("cpu"), torch.float32)
    hidden = x.clone()
    compiled.apply_(hidden, ForwardPlan(torch.zeros(x.shape[0], dtype=torch.int32), None))

    torch.testing.assert_close(hidden, expected, rtol=1e-5, atol=1e-5)
    # The edit must actually do something, or the comparison proves nothing.
    assert (hidden - x).abs().max() > 1e-2


@pytest.mark.parametrize("architecture,extra", [("standard", {}), ("jumprelu", {}), ("topk", {"k": 7})])
def test_round_trip_through_sae_lens_directory(tmp_path, architecture, extra):
    """A directory sae-lens saves loads in pysteer; what pysteer saves loads in sae-lens."""
    original = random_sae_lens(architecture, D_IN, D_SAE, seed=3, **extra)
    original.save_model(tmp_path / "from_sae_lens")
    ours = load_sae(tmp_path / "from_sae_lens")
    ours.save(tmp_path / "from_pysteer")
    back = sae_lens.SAE.load_from_disk(str(tmp_path / "from_pysteer"))
    x = torch.randn(11, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x), original.encode(x))
        torch.testing.assert_close(ours.encode(x), original.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.decode(ours.encode(x)), original.decode(original.encode(x)),
                                   rtol=1e-5, atol=1e-5)


def test_rows_with_other_configurations_match_each_alone():
    sae = random_sae_lens("jumprelu", D_IN, D_SAE, seed=5)
    x = torch.randn(6, D_IN)
    table = torch.tensor([[1.0, 1.0, 1.0, 0.0, 1.0, 1.0], [-2.0, 0.5, 3.0, 0.0, 0.0, 0.5]])
    iv = SparseIntervention.from_sae(load_sae(sae), FEATURES, table, EDITS, layer=0)
    compiled = compile_intervention(iv, torch.device("cpu"), torch.float32)
    row_index = torch.tensor([0, 1, -1, 1, 0, -1], dtype=torch.int32)
    hidden = x.clone()
    compiled.apply_(hidden, ForwardPlan(row_index, None))
    for token, row in enumerate(row_index.tolist()):
        expected = x[token] if row < 0 else _oracle(sae, x[token:token + 1], table[row])[0]
        torch.testing.assert_close(hidden[token], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(hidden[2], x[2]) and torch.equal(hidden[5], x[5])  # untouched: bit-identical


def test_feature_edit_codes_are_stable():
    # The integer codes are the kernel ABI shared with csrc/ and triton_kernels/.
    assert [int(e) for e in (FeatureEdit.ADD, FeatureEdit.SET, FeatureEdit.SCALE, FeatureEdit.ABLATE)] == [0, 1, 2, 3]
