"""SAE training: the TopK trainer, metrics, folding, saving, resuming, streaming, corpora, CLI."""

import argparse
import json

import pytest
import torch

import pysteer
from pysteer.training import (ModelActivationSource, SelfChatCorpus, ShuffleBuffer,
                              SyntheticSource, TextFileCorpus, TopKTrainer, TrainConfig,
                              TrainingError,
                              collect_tokens, evaluate_sae, reconstruction_metrics, sae_dir,
                              train_saes)
from pysteer.training.cli import register
from pysteer.training.loop import CHECKPOINT_DIR

from model_zoo import tiny_chat_model


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny matmuls on a shared 2-core machine: a second (spinning) thread makes them ~40x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _small_run_config(**overrides):
    base = dict(d_sae=48, k=4, tokens=128 * 20, batch_size=128, lr=3e-3, buffer_tokens=1024,
                dead_tokens=1000, aux_k=16, seed=3)
    return TrainConfig(**{**base, **overrides})


def _synthetic(seed=0, layers=(0,)):
    return SyntheticSource(24, 32, 3, chunk_tokens=300, seed=seed, layers=layers)


# ------------------------------------------------------------------------ metrics
def test_metrics_on_a_hand_checked_case():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])  # mean 0, Σ‖x − x̄‖² = 10
    m = reconstruction_metrics(x, 0.5 * x, torch.tensor([1, 2, 0, 3]))
    assert m["explained_variance"] == pytest.approx(1 - 2.5 / 10)       # Σ‖x/2‖² = 2.5
    assert m["l0"] == pytest.approx(1.5) and m["mse"] == pytest.approx(2.5 / 4)
    assert reconstruction_metrics(x + 3.0, x + 3.0, torch.zeros(4))["explained_variance"] == 1.0

    cfg = TrainConfig(d_sae=6, k=2, tokens=8, batch_size=4, buffer_tokens=4, dead_tokens=8)
    trainer = TopKTrainer(2, cfg, seed=0)
    trainer.initialise(x)
    trainer.tokens_since_fired[:] = torch.tensor([0, 7, 8, 9, 100, 3])
    assert trainer.dead_fraction() == pytest.approx(3 / 6)                # ≥ 8 tokens silent
    trainer.step(x, lr=1e-3)
    with torch.no_grad():
        _, values, indices = trainer.encode_topk(trainer.scale * x)       # after the step: no fire
    before = torch.tensor([0, 7, 8, 9, 100, 3])
    # The counters: reset for latents that fired in the step's batch, +4 tokens otherwise.
    fired = trainer.tokens_since_fired == 0
    assert torch.equal(trainer.tokens_since_fired[~fired], before[~fired] + 4)
    assert fired.any()


# ------------------------------------------------------------ learning a dictionary
def test_topk_trainer_recovers_a_known_sparse_dictionary():
    source = SyntheticSource(64, 64, 3, chunk_tokens=1024, noise=0.01, seed=0)
    cfg = TrainConfig(d_sae=128, k=4, tokens=256 * 300, batch_size=256, lr=1e-2, buffer_tokens=8192,
                      dead_tokens=4096, aux_k=32)
    trainer = TopKTrainer(64, cfg, seed=0)
    buffer = ShuffleBuffer(source, cfg.buffer_tokens, cfg.batch_size, seed=0)
    trainer.initialise(buffer.ensure_filled()[0])
    for step in range(cfg.total_steps):
        trainer.step(buffer.next_batch()[0], cfg.lr_at(step))
    held = collect_tokens(SyntheticSource(64, 64, 3, seed=99), 2048)[0]
    assert trainer.evaluate(held)["explained_variance"] > 0.9
    best_cos = (source.dictionary @ trainer.W_dec.detach().t()).max(dim=-1).values
    assert (best_cos > 0.9).float().mean() > 0.8, best_cos
    assert torch.allclose(trainer.W_dec.norm(dim=-1), torch.ones(128), atol=1e-5)  # unit rows kept


# ---------------------------------------------------------------------- folding
def test_saved_sae_on_raw_activations_equals_trainer_on_normalised_ones():
    raw = 7.0 * torch.randn(300, 24) + 2.0  # far from unit scale: s ≠ 1 matters
    cfg = _small_run_config()
    trainer = TopKTrainer(24, cfg, seed=0)
    trainer.initialise(raw)
    for step in range(5):
        trainer.step(raw[64 * (step % 4):64 * (step % 4) + 64], 3e-3)
    s = trainer.scale
    assert abs(s - 1) > 0.5
    sae = trainer.to_sae()
    with torch.no_grad():
        x_hat, pre, values, indices = trainer.forward(s * raw)
    acts = torch.zeros(300, cfg.d_sae).scatter_(1, indices, values)
    torch.testing.assert_close(sae.encode(raw), acts / s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(sae.encode(raw)), x_hat / s, rtol=1e-5, atol=1e-4)
    assert evaluate_sae(sae, raw)["explained_variance"] == pytest.approx(
        trainer.evaluate(raw)["explained_variance"], abs=1e-6)


def test_evaluation_decodes_with_the_sparse_kernel_and_matches_the_dense_formula(monkeypatch):
    raw = 3.0 * torch.randn(200, 24) - 1.0
    trainer = TopKTrainer(24, _small_run_config(), seed=1)
    trainer.initialise(raw)
    trainer.step(raw[:128], 3e-3)
    decoded = []
    sparse_decode = pysteer.ops.sparse_decode
    monkeypatch.setattr(pysteer.ops, "sparse_decode", lambda *a, **kw: decoded.append(1) or sparse_decode(*a, **kw))
    got = trainer.evaluate(raw, chunk=64)
    assert len(decoded) == 4  # one sparse decode per chunk of 64 rows
    with torch.no_grad():  # x̂ = relu(top-k of pre), scattered to [N, F], @ W_dec + b_dec; in raw units
        x = trainer.scale * raw
        pre = (x - trainer.b_dec) @ trainer.W_enc + trainer.b_enc
        values, indices = pre.topk(trainer.config.k, dim=-1)
        acts = torch.zeros_like(pre).scatter_(1, indices, values.relu())
        x_hat = (acts @ trainer.W_dec + trainer.b_dec) / trainer.scale
    expected = reconstruction_metrics(raw, x_hat, (acts > 0).sum(-1))
    assert got["l0"] == expected["l0"]
    assert got["explained_variance"] == pytest.approx(expected["explained_variance"], abs=1e-6)
    assert got["mse"] == pytest.approx(expected["mse"], rel=1e-5)


# ------------------------------------------------------------- saving and loading
def test_saved_sae_loads_in_pysteer_and_sae_lens_with_its_metrics(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    source = _synthetic(layers=(2, 5))
    held = collect_tokens(_synthetic(seed=77, layers=(2, 5)), 512)
    saved = train_saes(source, _small_run_config(), tmp_path, eval_data=held, model_name="synthetic",
                       metadata={"corpus": "synthetic", "command": "test"}, progress=False,
                       metrics_every=5, dtype_out=torch.float16)
    assert set(saved) == {2, 5} and not (tmp_path / CHECKPOINT_DIR).exists()
    for layer, path in saved.items():
        assert path == sae_dir(tmp_path, layer)
        sae = pysteer.load_sae(path)
        assert sae.architecture == "topk" and sae.k == 4 and sae.dtype == torch.float16
        assert sae.hook_name == f"blocks.{layer}.hook_resid_post" and sae.model_name == "synthetic"
        training = sae.metadata["training"]
        for key in ("heldout_explained_variance", "heldout_l0", "dead_fraction", "tokens_seen",
                    "seed", "device", "history"):
            assert key in training, key
        assert training["tokens_seen"] == 128 * 20 and training["seed"] == 3
        assert training["heldout_l0"] <= 4 and sae.metadata["corpus"] == "synthetic"
        # The stored EV is the saved (fp16) SAE's on the held-out rows.
        assert evaluate_sae(sae, held[layer])["explained_variance"] == pytest.approx(
            training["heldout_explained_variance"], abs=1e-9)
        lens = sae_lens.SAE.load_from_disk(str(path))
        x = held[layer][:32]
        with torch.no_grad():
            ours = sae.to(dtype=torch.float32)
            theirs = lens.to(dtype=torch.float32) if hasattr(lens, "to") else lens
            torch.testing.assert_close(theirs.encode(x), ours.encode(x), rtol=1e-3, atol=1e-3)
    with pytest.raises(FileExistsError, match="overwrite"):
        train_saes(source, _small_run_config(), tmp_path, progress=False)


# ----------------------------------------------------------------------- resuming
class _Stop(Exception):
    pass


@pytest.mark.parametrize("checkpoint_every", [4, 8])  # mid-fill, and exactly at a fill's end
def test_interrupted_run_resumes_bit_exactly(tmp_path, checkpoint_every):
    cfg = _small_run_config()  # 1024-row fills of 8 batches; 300-row chunks straddle fills
    reference = train_saes(_synthetic(), cfg, tmp_path / "a", progress=False)[0]

    def interrupt(step, trainers):
        if step == 13:
            raise _Stop
    with pytest.raises(_Stop):
        train_saes(_synthetic(), cfg, tmp_path / "b", progress=False, checkpoint_every=checkpoint_every,
                   callback=interrupt)
    state = json.loads((tmp_path / "b" / CHECKPOINT_DIR / "state.json").read_text())
    assert state["step"] == 13 - 13 % checkpoint_every
    steps_after_resume = []
    resumed = train_saes(_synthetic(), cfg, tmp_path / "b", progress=False,
                         callback=lambda step, t: steps_after_resume.append(step))[0]
    assert steps_after_resume[0] == state["step"] + 1
    a, b = pysteer.load_sae(reference), pysteer.load_sae(resumed)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name   # bit-exact
    def metrics(sae):  # wall-clock fields differ between runs; every measured metric must not
        return [{k: v for k, v in entry.items() if k != "elapsed_s"}
                for entry in sae.metadata["training"]["history"]]
    assert metrics(a) == metrics(b)


def test_bad_settings_are_refused_by_name(tmp_path):
    with pytest.raises(TrainingError, match="--k must be in 1..d_sae"):
        train_saes(_synthetic(), _small_run_config(k=100), tmp_path, progress=False)
    with pytest.raises(TrainingError, match="at least one batch"):
        train_saes(_synthetic(), _small_run_config(buffer_tokens=64), tmp_path, progress=False)


def test_resume_refuses_a_checkpoint_of_different_settings(tmp_path):
    def interrupt(step, trainers):
        raise _Stop
    with pytest.raises(_Stop):
        train_saes(_synthetic(), _small_run_config(), tmp_path, progress=False, checkpoint_every=1,
                   callback=interrupt)
    with pytest.raises(TrainingError, match="lr: checkpoint 0.003 vs now 0.001"):
        train_saes(_synthetic(), _small_run_config(lr=1e-3), tmp_path, progress=False)


# ----------------------------------------------------------------- model streaming
@pytest.fixture(scope="module")
def chat():
    return tiny_chat_model(seed=0)


def test_self_chat_cache_replays_transcripts_and_refuses_other_settings(chat, tmp_path, monkeypatch):
    model, tokenizer = chat
    make = lambda **kw: SelfChatCorpus(model, tokenizer, n_prompts=40, batch_size=4, max_new_tokens=4,
                                       heldout_fraction=0.2, cache_dir=tmp_path, **kw)
    first = list(make().texts("heldout"))
    assert first == list(SelfChatCorpus(model, tokenizer, n_prompts=40, batch_size=4, max_new_tokens=4,
                                        heldout_fraction=0.2).texts("heldout"))   # the cache changes nothing
    assert len(list(tmp_path.glob("heldout-*.json"))) == -(-len(first) // 4)

    def no_generation(*args, **kwargs):
        raise AssertionError("a cached batch was generated again")
    cached = make()
    monkeypatch.setattr(cached, "_answer", no_generation)
    assert list(cached.texts("heldout")) == first                          # read back, not generated
    assert list(cached.texts("heldout", start=2)) == first[2:]
    # Later passes cut the prompts into the same batches (n is not a multiple of the batch
    # size here), so cycling and resuming mid-pass replay the cache too.
    assert len(first) % 4 != 0
    import itertools
    two_passes = list(itertools.islice(cached.texts("heldout", cycle=True), 2 * len(first) + 3))
    assert two_passes == first + first + first[:3]
    assert list(itertools.islice(cached.texts("heldout", start=len(first) + 2, cycle=True), 3)) == first[2:5]
    with pytest.raises(TrainingError, match="other settings"):
        list(SelfChatCorpus(model, tokenizer, n_prompts=40, batch_size=4, max_new_tokens=6,
                            heldout_fraction=0.2, cache_dir=tmp_path).texts("heldout"))


def test_self_chat_stream_keeps_every_non_pad_token_and_a_bounded_buffer(chat):
    model, tokenizer = chat
    corpus = SelfChatCorpus(model, tokenizer, n_prompts=60, batch_size=4, max_new_tokens=5,
                            heldout_fraction=0.2)
    held_texts = list(corpus.texts("heldout"))
    assert len(held_texts) == len(corpus.prompts("heldout")) > 3
    assert held_texts == list(corpus.texts("heldout"))                     # deterministic
    assert list(corpus.texts("heldout", start=3)) == held_texts[3:]         # resumable by index
    assert not set(corpus.prompts("heldout")) & set(corpus.prompts("train"))
    assert all(t.startswith("<|im_start|>") and "<|im_start|>assistant" in t for t in held_texts)

    source = ModelActivationSource(model, tokenizer, corpus, [1, 0], split="heldout", cycle=False,
                                   docs_per_chunk=3, max_tokens=64)
    chunks = list(source.chunks(0))
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in held_texts]
    assert sum(c[1].shape[0] for c in chunks) == sum(n - 1 for n in lengths)  # non-pad, no first token
    # Rows equal the unpadded, hook-free hidden states (hidden_states[ℓ+1] is layer ℓ's output).
    ids = torch.tensor([tokenizer(held_texts[0], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(chunks[0][1][:lengths[0] - 1], hidden[2][0, 1:], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(chunks[0][0][:lengths[0] - 1], hidden[1][0, 1:], rtol=1e-4, atol=1e-4)

    class Counting:
        layers, d_in, rows = source.layers, source.d_in, 0

        def chunks(self, start=0):
            for chunk in ModelActivationSource(model, tokenizer, corpus, [0, 1], docs_per_chunk=3,
                                               max_tokens=64).chunks(start):
                Counting.rows += chunk[0].shape[0]
                yield chunk
    buffer = ShuffleBuffer(Counting(), capacity=64, batch_size=16, seed=0)
    for _ in range(12):
        batch = buffer.next_batch()
        assert batch[0].shape == (16, 48) and batch[1].shape == (16, 48)
    assert buffer.data[0].shape == (64, 48) and buffer.state.fill == 2
    longest = 3 * 63
    assert Counting.rows - 12 * 16 <= 64 + longest and buffer.peak_rows <= 64 + longest


# ------------------------------------------------------------------------ corpora
def test_text_file_corpus_chunks_and_a_disjoint_heldout_split(chat, tmp_path):
    _, tokenizer = chat
    (tmp_path / "docs").mkdir()
    words = " ".join(f"word{i} is here." for i in range(200))
    (tmp_path / "docs" / "a.txt").write_text(words)
    (tmp_path / "docs" / "b.md").write_text("# Title\n" + words[::-1])
    (tmp_path / "docs" / "c.jsonl").write_text("\n".join(json.dumps({"text": f"line {i}: " + words[:300]})
                                                          for i in range(20)))
    corpus = TextFileCorpus([tmp_path / "docs"], tokenizer, max_tokens=16, heldout_fraction=0.3)
    chunks = list(corpus.chunks())
    train, held = list(corpus.texts("train")), list(corpus.texts("heldout"))
    assert len(chunks) > 50 and held and train
    assert sorted(train + held) == sorted(chunks) and not set(train) & set(held)
    assert all(len(tokenizer(c)["input_ids"]) <= 16 for c in chunks)
    cycled = corpus.texts("train", start=len(train) - 1, cycle=True)
    assert [next(cycled), next(cycled)] == [train[-1], train[0]]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(TrainingError, match=r"bad.jsonl:2"):
        list(TextFileCorpus([tmp_path / "bad.jsonl"], tokenizer).chunks())
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TextFileCorpus([tmp_path / "nowhere"], tokenizer)


# --------------------------------------------------------------------------- CLI
def _parser():
    parser = argparse.ArgumentParser(prog="pysteer")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_trains_from_files_and_refuses_to_overwrite(chat, tmp_path):
    model, tokenizer = chat
    model.save_pretrained(tmp_path / "model", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "corpus.txt").write_text(" ".join(f"Sentence number {i} talks about cats." for i in range(300)))
    argv = ["train-sae", "--model", str(tmp_path / "model"), "--layer", "1", "--corpus",
            str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "out"), "--d-sae", "64", "--k", "4",
            "--tokens", "640", "--batch-size", "64", "--buffer-tokens", "256", "--eval-tokens", "64",
            "--max-doc-tokens", "32", "--heldout-fraction", "0.2", "--dtype-out", "float16", "--quiet",
            "--device", "cpu"]
    args = _parser().parse_args(argv)
    assert args.run(args) == 0
    sae = pysteer.load_sae(tmp_path / "out" / "blocks.1.hook_resid_post")
    assert sae.d_in == 48 and sae.d_sae == 64 and sae.dtype == torch.float16
    assert sae.metadata["training"]["tokens_seen"] == 640
    assert "corpus.txt" in sae.metadata["corpus"] and sae.metadata["command"]
    weights = (tmp_path / "out" / "blocks.1.hook_resid_post" / "sae_weights.safetensors").read_bytes()
    args = _parser().parse_args(argv)
    with pytest.raises(FileExistsError, match="--overwrite"):
        args.run(args)
    assert (tmp_path / "out" / "blocks.1.hook_resid_post" / "sae_weights.safetensors").read_bytes() == weights
