"""SAE architectures as strategies: each one's activation, blocks, thresholds and file keys."""

import pytest
import torch

from pysteer import SAEFormatError, SparseIntervention, SteeringSpecError, load_sae
from pysteer.sae import ARCHITECTURES, SAE, Architecture, architecture_named, random_sae

D_IN, D_SAE = 23, 97  # odd sizes: blocks of 13 features leave a ragged last block


def _sae(name: str, **extra) -> SAE:
    sae = random_sae(D_IN, D_SAE, name, k=9 if name == "topk" else None, seed=4)
    if extra.get("feature_scale"):
        sae.feature_scale = 0.5 + torch.rand(D_SAE, generator=torch.Generator().manual_seed(1))
    return sae


def _reference(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """The formulas of the SAE docstring, written out."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    if sae.architecture == "standard":
        return pre.relu()
    if sae.architecture == "jumprelu":
        return pre.relu() * (pre > sae.threshold)
    scaled = pre * (sae.feature_scale if sae.feature_scale is not None else 1.0)
    top = scaled.topk(sae.k, dim=-1)
    return torch.zeros_like(scaled).scatter(-1, top.indices, top.values.relu())


CASES = [("standard", {}), ("jumprelu", {}), ("topk", {}), ("topk", {"feature_scale": True})]


def test_the_registry_names_each_architecture_once():
    assert list(ARCHITECTURES) == ["standard", "jumprelu", "topk"]
    for name, arch in ARCHITECTURES.items():
        assert isinstance(arch, Architecture) and arch.name == name and architecture_named(name) is arch
    assert [a.needs_full_encode for a in ARCHITECTURES.values()] == [False, False, True]
    with pytest.raises(SAEFormatError, match="cfg.json: architecture 'gated' is not supported; expected one "
                                             "of standard, jumprelu, topk"):
        architecture_named("gated", "cfg.json")
    with pytest.raises(SAEFormatError, match="architecture None is not supported"):
        architecture_named(None)


@pytest.mark.parametrize("name,extra", CASES)
def test_activate_and_feature_blocks_equal_the_formula(name, extra):
    sae = _sae(name, **extra)
    assert sae.arch is architecture_named(name)
    x = torch.randn(11, D_IN, generator=torch.Generator().manual_seed(0))
    expected = _reference(sae, x)
    torch.testing.assert_close(sae.encode(x), expected)
    blocks = list(sae.arch.feature_blocks(sae, x, 13))
    assert [b[0] for b in blocks] == ([0] if sae.arch.needs_full_encode else list(range(0, D_SAE, 13)))
    assert blocks[-1][1] == D_SAE and all(acts.dtype == torch.float32 for *_, acts in blocks)
    torch.testing.assert_close(torch.cat([acts for *_, acts in blocks], dim=1), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_block_tokens_bound_the_working_set(name):
    sae = _sae(name)
    tokens = sae.arch.block_tokens(sae, 64, 16)
    width = D_SAE if sae.arch.needs_full_encode else 16
    assert 1 <= tokens <= 64 and (tokens * width <= 64 * 16 or tokens == 1)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_feature_thresholds_make_the_sparse_formula_exact(name):
    """relu(pre)·(pre > θ) with the strategy's θ is the SAE's own activation for a
    feature-local architecture."""
    sae = _sae(name)
    index = torch.tensor([0, 5, 96])
    theta = sae.arch.feature_thresholds(sae, index)
    assert theta.shape == (3,) and theta.dtype == torch.float32
    if sae.arch.needs_full_encode:
        return  # TopK's activation comes from the full encode, not from a threshold
    x = torch.randn(7, D_IN, generator=torch.Generator().manual_seed(2))
    pre = sae.pre_activations(x)[:, index]
    torch.testing.assert_close(pre.relu() * (pre > theta), sae.encode(x)[:, index])


@pytest.mark.parametrize("name,extra", CASES)
def test_each_architecture_round_trips_through_the_sae_lens_format(tmp_path, name, extra):
    sae = _sae(name, **extra)
    back = load_sae(sae.save(tmp_path / "sae"))
    assert back.arch is sae.arch and back.k == sae.k
    x = torch.randn(5, D_IN, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(back.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)


def test_what_an_architecture_needs_is_checked():
    base = random_sae(D_IN, D_SAE, "standard", seed=0)
    tensors = (base.W_enc, base.b_enc, base.W_dec, base.b_dec)
    with pytest.raises(SAEFormatError, match="a jumprelu SAE needs a 'threshold' tensor"):
        SAE(*tensors, "jumprelu")
    with pytest.raises(SAEFormatError, match=r"a topk SAE needs 0 < k <= d_sae \(97\), got k=None"):
        SAE(*tensors, "topk")
    with pytest.raises(SAEFormatError, match="architecture 'gated' is not supported"):
        SAE(*tensors, "gated")


def test_interventions_ask_the_strategy():
    topk = random_sae(D_IN, D_SAE, "topk", k=5, seed=0)
    iv = SparseIntervention.from_sae(topk, [1, 2], [[1.0, 1.0]], layer=0)
    assert iv.arch is ARCHITECTURES["topk"] and iv.sae is topk and iv.d_sae == D_SAE
    plain = SparseIntervention.from_sae(random_sae(D_IN, D_SAE, seed=0), [1], [[1.0]], layer=0)
    assert plain.arch is ARCHITECTURES["standard"] and plain.sae is None
    with pytest.raises(SteeringSpecError, match="topk SAE features compete over the whole SAE"):
        SparseIntervention(0, [1], "add", [[1.0]], iv.enc_rows[:1], iv.enc_bias[:1], iv.threshold[:1],
                           iv.dec_rows[:1], iv.input_offset, "topk")
    with pytest.raises(SteeringSpecError, match="architecture 'gated' is not supported"):
        SparseIntervention(0, [1], "add", [[1.0]], iv.enc_rows[:1], iv.enc_bias[:1], iv.threshold[:1],
                           iv.dec_rows[:1], iv.input_offset, "gated")
    with pytest.raises(SteeringSpecError, match="is 'jumprelu' but its SAE .* is 'topk'"):
        SparseIntervention(0, [1], "add", [[1.0]], iv.enc_rows[:1], iv.enc_bias[:1], iv.threshold[:1],
                           iv.dec_rows[:1], iv.input_offset, "jumprelu", topk)
