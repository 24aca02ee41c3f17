"""SAE files: sae-lens and sparsify formats in, sae-lens out, and clear errors for bad files."""

import json

import pytest
import torch
from safetensors.torch import save_file

from pysteer import SAEFormatError, load_sae
from pysteer.sae import random_sae

D_IN, D_SAE = 19, 53


def _write_sae_lens(path, cfg_overrides=None, tensors=None):
    sae = random_sae(D_IN, D_SAE, "jumprelu", seed=2)
    sae.save(path)
    if cfg_overrides is not None:
        cfg = json.loads((path / "cfg.json").read_text())
        cfg.update(cfg_overrides)
        (path / "cfg.json").write_text(json.dumps(cfg))
    if tensors is not None:
        save_file(tensors, str(path / "sae_weights.safetensors"))
    return sae


def test_sparsify_directory_matches_the_sparsify_formula(tmp_path):
    torch.manual_seed(0)
    enc_w, enc_b = torch.randn(D_SAE, D_IN), torch.randn(D_SAE)
    w_dec, b_dec = torch.randn(D_SAE, D_IN), torch.randn(D_IN)
    save_file({"encoder.weight": enc_w, "encoder.bias": enc_b, "W_dec": w_dec, "b_dec": b_dec},
              str(tmp_path / "sae.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": D_IN, "num_latents": D_SAE, "k": 6,
                                                   "expansion_factor": 32, "normalize_decoder": True}))
    sae = load_sae(tmp_path)
    x = torch.randn(8, D_IN)
    # sparsify: pre = relu(W(x − b_dec) + b); keep the top k; decode = acts @ W_dec + b_dec
    pre = torch.relu((x - b_dec) @ enc_w.t() + enc_b)
    top = pre.topk(6, dim=1)
    acts = torch.zeros_like(pre).scatter(1, top.indices, top.values)
    torch.testing.assert_close(sae.encode(x), acts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(sae.encode(x)), acts @ w_dec + b_dec, rtol=1e-5, atol=1e-5)
    assert sae.architecture == "topk" and sae.k == 6


def test_save_refuses_to_overwrite_and_round_trips(tmp_path):
    sae = _write_sae_lens(tmp_path / "a")
    with pytest.raises(FileExistsError):
        sae.save(tmp_path / "a")
    back = load_sae(tmp_path / "a")
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        assert torch.equal(getattr(back, name), getattr(sae, name))


def test_truncated_safetensors_names_the_file(tmp_path):
    _write_sae_lens(tmp_path)
    weights = tmp_path / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(SAEFormatError, match="sae_weights.safetensors.*truncated"):
        load_sae(tmp_path)


def test_malformed_config_names_the_file(tmp_path):
    _write_sae_lens(tmp_path)
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(SAEFormatError, match="cfg.json: not valid JSON"):
        load_sae(tmp_path)


@pytest.mark.parametrize("overrides,message", [
    ({"d_in": D_IN + 1}, "tensor 'W_enc' has shape"),
    ({"architecture": "gated"}, "architecture 'gated' is not supported"),
    ({"normalize_activations": "layer_norm"}, "normalize_activations='layer_norm'"),
    ({"d_sae": "many"}, "'d_sae' must be a positive integer"),
])
def test_inconsistent_config_names_the_key(tmp_path, overrides, message):
    _write_sae_lens(tmp_path, cfg_overrides=overrides)
    with pytest.raises(SAEFormatError, match=message):
        load_sae(tmp_path)


def test_missing_tensor_names_the_key(tmp_path):
    sae = random_sae(D_IN, D_SAE, "jumprelu")
    _write_sae_lens(tmp_path, tensors={"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec,
                                       "b_dec": sae.b_dec})
    with pytest.raises(SAEFormatError, match="missing tensor 'threshold'"):
        load_sae(tmp_path)


def test_nan_weights_are_rejected(tmp_path):
    sae = random_sae(D_IN, D_SAE)
    w_enc = sae.W_enc.clone()
    w_enc[0, 0] = float("nan")
    _write_sae_lens(tmp_path, cfg_overrides={"architecture": "standard"},
                    tensors={"W_enc": w_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec})
    with pytest.raises(SAEFormatError, match="W_enc contains NaN"):
        load_sae(tmp_path)


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(SAEFormatError, match="no such SAE directory"):
        load_sae(tmp_path / "nowhere")
    (tmp_path / "cfg.json").write_text("{}")
    with pytest.raises(SAEFormatError, match="neither sae_weights.safetensors"):
        load_sae(tmp_path)


def test_a_terminated_command_leaves_no_staging_directory(tmp_path):
    """SIGTERM (a scheduler's stop) while an output is being staged: the hidden staging
    directory is removed and the exit status says terminated, as after Ctrl-C."""
    import signal
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import sys, time
        from pysteer.cli import sigterm_as_exit
        from pysteer.fileio import staged_directory
        with sigterm_as_exit(), staged_directory(sys.argv[1]) as staging:
            (staging / "half-written.json").write_text("{")
            print("staged", flush=True)
            time.sleep(60)
    """)
    out = tmp_path / "results"
    child = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "staged"
        assert len(list(tmp_path.iterdir())) == 1  # the hidden staging directory exists
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        child.kill()
    assert list(tmp_path.iterdir()) == []  # nothing left behind, no half-written result


def test_overwrite_replaces_only_an_saes_own_files(tmp_path):
    first, second = random_sae(D_IN, D_SAE, seed=1), random_sae(D_IN, D_SAE, "topk", k=4, seed=2)
    first.save(tmp_path / "sae")
    second.save(tmp_path / "sae", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert torch.equal(load_sae(tmp_path / "sae").W_enc, second.W_enc)
    (tmp_path / "sae" / "sparsity.safetensors").write_bytes(b"the user's")
    with pytest.raises(FileExistsError, match="also holds sparsity.safetensors"):
        first.save(tmp_path / "sae", overwrite=True)
    assert (tmp_path / "sae" / "sparsity.safetensors").read_bytes() == b"the user's"
    assert torch.equal(load_sae(tmp_path / "sae").W_enc, second.W_enc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no staging left behind


def test_staged_directory_without_owns_owns_what_it_wrote(tmp_path):
    from pysteer.fileio import staged_directory
    out = tmp_path / "out"
    for text in ("one", "two"):
        with staged_directory(out, overwrite=True) as staging:
            (staging / "results.json").write_text(text)
    assert (out / "results.json").read_text() == "two"
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="also holds keep.txt"):
        with staged_directory(out, overwrite=True) as staging:
            (staging / "results.json").write_text("three")
    assert (out / "keep.txt").read_text() == "mine" and (out / "results.json").read_text() == "two"
    with pytest.raises(RuntimeError, match="does not own"):
        with staged_directory(tmp_path / "new", owns={"a.json"}) as staging:
            (staging / "b.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
