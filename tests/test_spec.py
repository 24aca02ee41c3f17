"""Steering specs: exact round trips, and clear errors for bad specs and mismatched models."""

import json

import pytest
import torch

import pysteer
from pysteer import DenseIntervention, SparseIntervention, SteeringSpec, SteeringSpecError
from pysteer.sae import random_sae
from model_zoo import tiny_model, tiny_spec


def _assert_same(a: SteeringSpec, b: SteeringSpec):
    assert (a.positions, a.model, a.metadata) == (b.positions, b.model, b.metadata)
    for x, y in zip(a.interventions, b.interventions, strict=True):
        assert type(x) is type(y) and x.layer == y.layer and x.edits == y.edits
        for name, value in vars(x).items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, getattr(y, name)) and value.dtype == getattr(y, name).dtype, name


def test_round_trip_is_exact_for_sparse_dense_and_several_layers(tmp_path):
    sparse = tiny_spec(n_configs=3).interventions[0]
    u = torch.randn(2, 48)
    dense = DenseIntervention(2, u / u.norm(dim=1, keepdim=True), torch.randn(3, 2), ["add", "project"])
    spec = SteeringSpec([sparse, dense], positions="generated", model={"hidden_size": 48, "name": "tiny"},
                        metadata={"method": "test"})
    spec.save(tmp_path / "spec")
    _assert_same(spec, SteeringSpec.load(tmp_path / "spec"))


def test_topk_spec_reloads_its_sae_from_disk(tmp_path):
    random_sae(48, 80, "topk", k=5).save(tmp_path / "sae")
    iv = SparseIntervention.from_sae(str(tmp_path / "sae"), [1, 2], [[1.0, 2.0]], layer=0)
    SteeringSpec([iv]).save(tmp_path / "spec")
    back = SteeringSpec.load(tmp_path / "spec")
    assert torch.equal(back.interventions[0].sae.W_enc, iv.sae.W_enc)


def test_save_never_overwrites_without_asking(tmp_path):
    spec = tiny_spec()
    spec.save(tmp_path / "spec")
    with pytest.raises(FileExistsError):
        spec.save(tmp_path / "spec")
    spec.save(tmp_path / "spec", overwrite=True)


def test_bad_specs_are_clear_errors():
    sae = random_sae(48, 67)
    with pytest.raises(SteeringSpecError, match=r"coefficient \[0, 1\] is NaN"):
        SparseIntervention.from_sae(sae, [1, 2], [[1.0, float("nan")]], layer=0)
    with pytest.raises(IndexError, match="feature index 67 is out of range"):
        SparseIntervention.from_sae(sae, [1, 67], [[1.0, 1.0]], layer=0)
    with pytest.raises(SteeringSpecError, match="coefficients must be"):
        SparseIntervention.from_sae(sae, [1, 2], [[1.0, 1.0, 1.0]], layer=0)
    with pytest.raises(ValueError, match="unknown feature edit"):
        SparseIntervention.from_sae(sae, [1], [[1.0]], "boost", layer=0)
    with pytest.raises(SteeringSpecError, match="unit vector"):
        DenseIntervention(0, torch.ones(48), [[1.0]], "project")
    with pytest.raises(SteeringSpecError, match="positions"):
        SteeringSpec(tiny_spec().interventions, positions="middle")


def test_spec_for_another_model_is_refused_before_any_compute():
    model = tiny_model("llama")
    wrong_width = SteeringSpec([SparseIntervention.from_sae(random_sae(64, 30), [1], [[1.0]], layer=0)],
                               model={"name": "some-64-wide-model"})
    with pytest.raises(SteeringSpecError, match="d_model=64.*hidden_size=48"):
        pysteer.attach(model, wrong_width)
    too_deep = SteeringSpec([SparseIntervention.from_sae(random_sae(48, 30), [1], [[1.0]], layer=7)])
    with pytest.raises(SteeringSpecError, match="layer 7"):
        pysteer.attach(model, too_deep)
    other_depth = SteeringSpec(tiny_spec().interventions, model={"num_hidden_layers": 30, "name": "x"})
    with pytest.raises(SteeringSpecError, match="30 layers"):
        pysteer.attach(model, other_depth)
    assert not any(type(m).__name__ == "SteeredLayer" for m in model.modules())


def test_bad_rows_and_double_attach():
    model = tiny_model("llama")
    with pysteer.steer(model, tiny_spec(n_configs=2)) as steering:
        with pytest.raises(SteeringSpecError, match="configuration 2 is out of range"):
            steering.set_rows([0, 2])
        with pytest.raises(SteeringSpecError, match="already steered"):
            pysteer.attach(model, tiny_spec())


def test_malformed_spec_files(tmp_path):
    tiny_spec().save(tmp_path / "spec")
    doc = json.loads((tmp_path / "spec" / "steering.json").read_text())
    doc["interventions"][0].pop("features")
    (tmp_path / "spec" / "steering.json").write_text(json.dumps(doc))
    with pytest.raises(SteeringSpecError, match="missing key 'features'"):
        SteeringSpec.load(tmp_path / "spec")
    weights = tmp_path / "spec" / "steering.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SteeringSpecError, match="truncated"):
        SteeringSpec.load(tmp_path / "spec")
    with pytest.raises(SteeringSpecError, match="missing"):
        SteeringSpec.load(tmp_path / "nothing")


def test_saved_directories_get_the_users_usual_mode_not_a_private_one(tmp_path):
    import os
    mask = os.umask(0o022)
    try:
        tiny_spec().save(tmp_path / "spec")
        random_sae(8, 16, seed=0).save(tmp_path / "sae")
    finally:
        os.umask(mask)
    for name in ("spec", "sae"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o755   # mkdtemp's 0o700 would fail this
        for file in (tmp_path / name).iterdir():                   # safetensors writes 0o600 files
            assert file.stat().st_mode & 0o777 == 0o644, file
