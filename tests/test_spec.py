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


# ---------------------------------------------------------------- features and layers
def _edit_saved(path, **changes):
    """Rewrite intervention 0 of a saved spec's steering.json (as a user editing it would)."""
    doc = json.loads((path / "steering.json").read_text())
    for key, value in changes.items():
        if value is None:
            doc["interventions"][0].pop(key)
        else:
            doc["interventions"][0][key] = value
    (path / "steering.json").write_text(json.dumps(doc))


def test_a_feature_listed_twice_is_refused_everywhere(tmp_path):
    sae = random_sae(48, 67)
    with pytest.raises(SteeringSpecError, match="feature 5 is listed twice"):
        SparseIntervention.from_sae(sae, [5, 9, 5], [[1.0, 2.0, 3.0]], layer=0)
    iv = SparseIntervention.from_sae(sae, [5, 9], [[1.0, 2.0]], layer=0)
    with pytest.raises(SteeringSpecError, match="feature 9 is listed twice"):
        SparseIntervention(0, [9, 9], ["add", "add"], [[1.0, 2.0]], iv.enc_rows, iv.enc_bias,
                           iv.threshold, iv.dec_rows, iv.input_offset)
    SteeringSpec([iv]).save(tmp_path / "spec")
    _edit_saved(tmp_path / "spec", features=[5, 5])
    with pytest.raises(SteeringSpecError, match=r"steering.json: intervention 0: .*feature 5 is listed twice"):
        SteeringSpec.load(tmp_path / "spec")


@pytest.mark.parametrize("bad,shown", [(1.7, "1.7"), ("3", "'3'"), (True, "True"), (2.0, "2.0"),
                                       (torch.tensor(1.5), "1.5")])
def test_a_feature_that_is_not_an_integer_is_named(bad, shown):
    sae = random_sae(48, 67)
    with pytest.raises(ValueError, match=rf"features\[1\] is {shown} .*must be an integer"):
        SparseIntervention.from_sae(sae, [4, bad], [[1.0, 1.0]], layer=0)
    with pytest.raises(ValueError, match="must be a sequence of integer indices"):
        SparseIntervention.from_sae(sae, "3", [[1.0]], layer=0)


def test_numpy_and_torch_integers_are_feature_indices():
    import numpy as np
    sae = random_sae(48, 67)
    for features in ([np.int64(4), torch.tensor(6)], torch.tensor([4, 6]), np.array([4, 6])):
        iv = SparseIntervention.from_sae(sae, features, [[1.0, 2.0]], layer=np.int32(1))
        assert iv.features == [4, 6] and type(iv.features[0]) is int and iv.layer == 1


def test_the_saved_spec_records_the_sae_width_and_is_checked_against_it_when_loaded(tmp_path):
    spec = tiny_spec()  # an SAE with d_sae=67
    spec.save(tmp_path / "spec")
    assert json.loads((tmp_path / "spec" / "steering.json").read_text())["interventions"][0]["d_sae"] == 67
    assert SteeringSpec.load(tmp_path / "spec").interventions[0].d_sae == 67
    features = spec.interventions[0].features
    _edit_saved(tmp_path / "spec", features=features[:-1] + [99999])
    with pytest.raises(SteeringSpecError, match=r"spec/steering.json: intervention 0: .*feature index 99999 "
                                                r"is out of range for an SAE with d_sae=67"):
        SteeringSpec.load(tmp_path / "spec")
    _edit_saved(tmp_path / "spec", features=features[:-1] + [-3])
    with pytest.raises(SteeringSpecError, match="intervention 0: .*feature index -3 is out of range"):
        SteeringSpec.load(tmp_path / "spec")
    _edit_saved(tmp_path / "spec", features=features, layer=-1)
    with pytest.raises(SteeringSpecError, match=r"steering.json: intervention 0: .*the layer must be at "
                                                r"least 0, got -1"):
        SteeringSpec.load(tmp_path / "spec")
    _edit_saved(tmp_path / "spec", layer=1.5)
    with pytest.raises(SteeringSpecError, match=r"intervention 0: .*the layer is 1.5 \(float\)"):
        SteeringSpec.load(tmp_path / "spec")
    _edit_saved(tmp_path / "spec", layer=1, d_sae=None)  # a file from before d_sae was recorded
    assert SteeringSpec.load(tmp_path / "spec").interventions[0].d_sae is None


def test_an_older_topk_spec_is_checked_against_the_sae_it_reloads(tmp_path):
    random_sae(48, 80, "topk", k=5).save(tmp_path / "sae")
    SteeringSpec([SparseIntervention.from_sae(str(tmp_path / "sae"), [1, 2], [[1.0, 2.0]], layer=0)]
                 ).save(tmp_path / "spec")
    _edit_saved(tmp_path / "spec", d_sae=None)
    assert SteeringSpec.load(tmp_path / "spec").interventions[0].d_sae == 80  # taken from the SAE
    _edit_saved(tmp_path / "spec", features=[1, 80])
    with pytest.raises(SteeringSpecError, match="intervention 0: .*feature index 80 is out of range for an "
                                                "SAE with d_sae=80"):
        SteeringSpec.load(tmp_path / "spec")
    _edit_saved(tmp_path / "spec", features=[1, 2], d_sae=256)  # the SAE on disk is not the one used
    with pytest.raises(SteeringSpecError, match="made for an SAE with d_sae=256, but its SAE .* has d_sae=80"):
        SteeringSpec.load(tmp_path / "spec")


def test_a_loaded_spec_edited_beyond_the_models_depth_fails_when_attached(tmp_path):
    model = tiny_model("llama")  # 3 layers
    tiny_spec().save(tmp_path / "spec")
    _edit_saved(tmp_path / "spec", layer=40)
    spec = SteeringSpec.load(tmp_path / "spec")
    with pytest.raises(SteeringSpecError, match=r"layer 40, but the model has 3 layers \(0..2\)"):
        with pysteer.steer(model, spec):
            pass
    assert not any(type(m).__name__ == "SteeredLayer" for m in model.modules())


def test_negative_layers_are_refused_in_memory_too():
    with pytest.raises(SteeringSpecError, match="the layer must be at least 0, got -1"):
        SparseIntervention.from_sae(random_sae(48, 67), [1], [[1.0]], layer=-1)
    with pytest.raises(SteeringSpecError, match="the layer must be at least 0, got -2"):
        DenseIntervention(-2, torch.eye(48)[:1], [[1.0]])


# ---------------------------------------------------------------- overwriting
def test_overwrite_replaces_only_a_specs_own_files(tmp_path):
    spec, other = tiny_spec(), tiny_spec(strength=2.0)
    spec.save(tmp_path / "spec")
    other.save(tmp_path / "spec", overwrite=True)
    _assert_same(other, SteeringSpec.load(tmp_path / "spec"))
    (tmp_path / "spec" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"also holds notes.txt.*replaces only steering.json, "
                                              r"steering.safetensors"):
        spec.save(tmp_path / "spec", overwrite=True)
    assert (tmp_path / "spec" / "notes.txt").read_text() == "mine"
    _assert_same(other, SteeringSpec.load(tmp_path / "spec"))  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec"]  # no staging left behind
    (tmp_path / "file").write_text("mine")
    with pytest.raises(FileExistsError, match="is a file"):
        spec.save(tmp_path / "file", overwrite=True)
    assert (tmp_path / "file").read_text() == "mine"


def test_extra_files_belong_to_the_spec(tmp_path):
    tiny_spec().save(tmp_path / "spec", extra_files={"discovery.json": "{}"})
    assert (tmp_path / "spec" / "discovery.json").read_text() == "{}"
    tiny_spec().save(tmp_path / "spec", overwrite=True, extra_files={"discovery.json": "[1]"})
    assert (tmp_path / "spec" / "discovery.json").read_text() == "[1]"
    with pytest.raises(FileExistsError, match="also holds discovery.json"):
        tiny_spec().save(tmp_path / "spec", overwrite=True)
    with pytest.raises(SteeringSpecError, match="plain file name"):
        tiny_spec().save(tmp_path / "other", extra_files={"../x.json": "{}"})


def test_a_failed_overwrite_leaves_the_saved_spec_as_it_was(tmp_path, monkeypatch):
    import pysteer.spec
    spec = tiny_spec()
    spec.save(tmp_path / "spec")

    def half_written(path, tensors):
        path.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(pysteer.spec, "save_tensors", half_written)
    with pytest.raises(OSError, match="disk full"):
        tiny_spec(strength=2.0).save(tmp_path / "spec", overwrite=True)
    _assert_same(spec, SteeringSpec.load(tmp_path / "spec"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec"]


# ---------------------------------------------------------------- spec algebra
def test_neutral_coefficients_and_configurations():
    from pysteer.ops import DenseEdit, FeatureEdit
    from pysteer.spec import neutral_coefficient
    assert [neutral_coefficient(e) for e in FeatureEdit] == \
        [{"ADD": 0.0, "SCALE": 1.0}.get(e.name) for e in FeatureEdit]
    assert neutral_coefficient(DenseEdit.ADD) == 0.0 and neutral_coefficient(DenseEdit.PROJECT) is None
    spec = tiny_spec(n_configs=3)  # edits add, add, set, scale, add: "set" has no neutral value
    assert spec.neutral_rows(2) is None
    add = SteeringSpec([SparseIntervention.from_sae(random_sae(48, 67), [1, 2], [[3.0, 4.0], [5.0, 6.0]],
                                                    ["add", "scale"], layer=0)])
    assert [t.tolist() for t in add.neutral_rows(2)] == [[[0.0, 1.0], [0.0, 1.0]]]
    assert spec.configuration(2).n_configs == 1
    assert torch.equal(spec.configuration(2).interventions[0].coefficients,
                       spec.interventions[0].coefficients[2:])
    assert add.configuration(1).interventions[0].coefficients.tolist() == [[5.0, 6.0]]
    with pytest.raises(SteeringSpecError, match="configuration 3 is out of range"):
        spec.configuration(3)


def test_stack_specs_only_groups_exact_edits():
    """The same case as tests/test_experiment.py's test of the experiment's stack_specs."""
    from pysteer.spec import stack_specs
    sae = random_sae(48, 64, "standard", seed=3)
    sae.b_enc[17] = 6.0  # always active: scaling it moves the residual, scale 1 does not
    u = torch.randn(48, generator=torch.Generator().manual_seed(5))
    specs = {"dm": SteeringSpec([DenseIntervention(1, u / u.norm(), [[12.0]], "project")]),
             "sparse_a": SteeringSpec([SparseIntervention.from_sae(sae, [3, 17, 40], [[9.0, -6.0, 7.0]],
                                                                   "add", layer=1)]),
             "sparse_b": SteeringSpec([SparseIntervention.from_sae(sae, [5, 17, 60], [[8.0, 3.0, -9.0]],
                                                                   ["add", "scale", "add"], layer=1)]),
             "set": SteeringSpec([SparseIntervention.from_sae(sae, [1], [[4.0]], "set", layer=1)]),
             "dense_add": SteeringSpec([DenseIntervention(0, torch.eye(48)[:2], [[1.0, 2.0]], "add")])}
    groups = stack_specs(specs)
    assert [names for _, names in groups] == [["dm"], ["set"], ["sparse_a", "sparse_b", "dense_add"]]
    stacked = groups[-1][0]
    assert stacked.n_configs == 3 and len(stacked.interventions) == 3
    assert stacked.metadata == {"method": "stacked", "configs": ["sparse_a", "sparse_b", "dense_add"]}
    # config 1 is sparse_b's row; the others sit at their neutral coefficients (add 0, scale 1)
    assert stacked.interventions[0].coefficients.tolist() == [[9.0, -6.0, 7.0], [0.0] * 3, [0.0] * 3]
    assert stacked.interventions[1].coefficients.tolist() == [[0.0, 1.0, 0.0], [8.0, 3.0, -9.0], [0.0, 1.0, 0.0]]
    assert stacked.interventions[2].coefficients.tolist() == [[0.0, 0.0], [0.0, 0.0], [1.0, 2.0]]
    two_rows = SteeringSpec([DenseIntervention(0, torch.eye(48)[:1], [[1.0], [2.0]], "add")])
    (alone, names), = stack_specs({"two_rows": two_rows})
    assert names == ["two_rows"] and alone.interventions[0].coefficients.tolist() == [[1.0]]


def test_stacked_rows_equal_each_spec_alone():
    """Row m of the stacked spec steers exactly as spec m alone: the neutral rows are exact."""
    from pysteer.spec import stack_specs
    model = tiny_model("llama")
    sae = random_sae(48, 64, "standard", seed=3)
    specs = {"a": SteeringSpec([SparseIntervention.from_sae(sae, [3, 17], [[9.0, -6.0]], "add", layer=1)]),
             "b": SteeringSpec([SparseIntervention.from_sae(sae, [5, 17], [[8.0, 3.0]], ["add", "scale"],
                                                            layer=1)])}
    (stacked, names), = stack_specs(specs)
    ids = torch.randint(3, 96, (1, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with pysteer.steer(model, stacked) as steering:
            rows = []
            for m in range(len(names)):
                steering.set_rows([m])
                rows.append(model(ids).logits)
        for m, name in enumerate(names):
            with pysteer.steer(model, specs[name]):
                assert torch.equal(rows[m], model(ids).logits), name


def test_reprs_are_short_and_name_what_matters():
    """Printing an SAE or a spec shows its shape facts in a line, not kilobytes of tensors."""
    sae = random_sae(d_in=64, d_sae=4096, architecture="topk", k=8, seed=0)
    shown = repr(sae)
    assert len(shown) < 200 and "topk k=8" in shown and "d_in=64" in shown and "d_sae=4096" in shown
    assert "tensor" not in shown
    sparse = SparseIntervention.from_sae(sae, list(range(40)), torch.ones(3, 40), layer=2)
    dense = DenseIntervention(layer=1, directions=torch.randn(2, 64), coefficients=[[1.0, -1.0]],
                              edits=["add", "add"])
    for text, facts in [(repr(sparse), ["layer=2", "40 feature(s)", "[0, 1, 2, 3, 4, 5, …]", "add×40",
                                        "3 config(s)", "d_sae=4096"]),
                        (repr(dense), ["layer=1", "2 direction(s)", "d_model 64", "add×2", "1 config(s)"])]:
        assert len(text) < 200 and "tensor" not in text
        for fact in facts:
            assert fact in text, (fact, text)
    spec = SteeringSpec([sparse], positions="generated", model={"name": "tiny"})
    assert repr(spec).startswith("SteeringSpec(positions='generated', 3 config(s), model='tiny', "
                                 "SparseIntervention(")
    both = repr(SteeringSpec([dense, DenseIntervention(layer=3, directions=torch.randn(64),
                                                       coefficients=[[0.5]])]))
    assert both.count("\n") == 3 and len(both) < 400


def test_two_interventions_from_one_sae_save_and_load_back(tmp_path):
    """They hold views of the same SAE bias; safetensors alone would refuse shared memory."""
    sae = random_sae(d_in=32, d_sae=64, seed=3)
    spec = SteeringSpec([SparseIntervention.from_sae(sae, [1, 2], torch.ones(1, 2), layer=1),
                         SparseIntervention.from_sae(sae, [3], torch.ones(1, 1), layer=2)])
    loaded = SteeringSpec.load(spec.save(tmp_path / "spec"))
    _assert_same(spec, loaded)
