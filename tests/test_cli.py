"""The command line: fast help, one meaning per flag, every checkable argument checked before
the model loads (exit status 2, the flag named, no traceback), and the demo's examples.

No test here loads a model: ``load_model`` is replaced by one that fails the test, and
``model_config`` by a small config, so each test shows its error comes first.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import pysteer
import pysteer.models
from pysteer.cli import main
from pysteer.experiment.instructions import INSTRUCTION_TYPES, resolve_instruction
from pysteer.ops import backends
from pysteer.sae import random_sae
from pysteer.spec import SparseIntervention, SteeringSpec

HIDDEN, LAYERS = 48, 4
LAZY_PACKAGES = ("pysteer", "pysteer.discovery", "pysteer.evaluation", "pysteer.experiment",
                 "pysteer.patching", "pysteer.training", "pysteer.tuner")


# ----------------------------------------------------------------------------- help
_HELP_CHILD = textwrap.dedent("""
    import argparse, contextlib, io, json, sys
    from pysteer.cli import build_parser, main
    from pysteer.cliargs import HelpFormatter

    def commands(parser, path=()):
        yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from commands(sub, path + (name,))

    def shown(default):
        return " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)

    report = []
    for path, parser in list(commands(build_parser())):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                main([*path, "--help"])
            except SystemExit as exc:
                code = exc.code
        text = " ".join(out.getvalue().split())
        # every default worth showing is shown, by the formatter or in the option's own words
        defaults = [(a.option_strings[0], shown(a.default)) for a in parser._actions
                    if a.option_strings and a.default not in (None, False, argparse.SUPPRESS, [], ())
                    and "(default" not in (a.help or "")]
        missing = [flag for flag, value in defaults if f"(default: {value})" not in text]
        heavy = sorted({"torch", "transformers"} & set(sys.modules))
        report.append({"command": list(path), "code": code, "heavy": heavy, "missing_defaults": missing})
    # a name exported from a same-named submodule stays the export once the submodule is imported
    import pysteer.discovery.saif, pysteer.patching.attach
    from pysteer.discovery import saif
    from pysteer.patching import attach
    report.append({"shadowed": [type(saif).__name__, type(attach).__name__]})
    print(json.dumps(report))
""")


def test_help_imports_no_torch_and_shows_defaults():
    child = subprocess.run([sys.executable, "-c", _HELP_CHILD], capture_output=True, text=True, timeout=120,
                           cwd=Path(__file__).resolve().parents[1])
    assert child.returncode == 0, child.stderr
    *pages, shadowed = json.loads(child.stdout.splitlines()[-1])
    commands = [" ".join(page["command"]) for page in pages]
    assert {"", "info", "generate", "discover diff-means", "discover saif", "discover concise", "tune", "eval",
            "train-sae", "demo"} <= set(commands)
    for page in pages:
        assert page["code"] == 0, page
        assert page["heavy"] == [], f"`pysteer {' '.join(page['command'])} --help` imported {page['heavy']}"
        assert page["missing_defaults"] == [], page
    assert shadowed["shadowed"] == ["function", "function"]


def test_lazy_packages_export_what_their_type_checking_imports_declare():
    for name in LAZY_PACKAGES:
        package = __import__(name, fromlist=["__all__"])
        tree = ast.parse(Path(package.__file__).read_text())
        declared = {alias.asname or alias.name for node in tree.body if isinstance(node, ast.If)
                    and getattr(node.test, "id", None) == "TYPE_CHECKING"
                    for stmt in node.body for alias in stmt.names}
        eager = {alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom)
                 for alias in node.names}
        eager |= {target.id for node in tree.body if isinstance(node, ast.Assign)
                  for target in node.targets if isinstance(target, ast.Name)}
        assert set(package.__all__) - eager == declared, name  # static tools see every lazy name
        for attr in package.__all__:
            assert getattr(package, attr) is not None, (name, attr)
        assert set(package.__all__) <= set(dir(package))
        with pytest.raises(AttributeError, match="no attribute 'nope'"):
            package.nope


# ----------------------------------------------------------------------------- set-up
@pytest.fixture
def no_model(monkeypatch):
    """``load_model`` fails the test; ``model_config`` answers with a small config."""
    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the argument was checked")

    monkeypatch.setattr(pysteer.models, "load_model", load_model)
    monkeypatch.setattr(pysteer.models, "model_config",
                        lambda name_or_path=None: SimpleNamespace(hidden_size=HIDDEN, num_hidden_layers=LAYERS))


@pytest.fixture
def environment_backend(monkeypatch):
    """Set PYSTEER_BACKEND for one test; the registry re-reads the environment before and after."""
    def set_to(value):
        if value is None:
            monkeypatch.delenv(backends.ENVIRONMENT_VARIABLE, raising=False)
        else:
            monkeypatch.setenv(backends.ENVIRONMENT_VARIABLE, value)
        backends.reload_environment()

    yield set_to
    monkeypatch.delenv(backends.ENVIRONMENT_VARIABLE, raising=False)
    backends.reload_environment()


def _refused(argv, capsys, *flags):
    """Run ``pysteer argv``; it must exit with status 2 and a message naming every flag, no traceback."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for flag in flags:
        assert flag in err, (flag, err)
    return err


def _sae_dir(tmp_path, d_in=HIDDEN, layer: "int | None" = 1, name="sae"):
    if (tmp_path / name).exists():
        return str(tmp_path / name)
    sae = random_sae(d_in, 64, "standard", seed=0)
    sae.hook_name = f"blocks.{layer}.hook_resid_post" if layer is not None else "embed"
    return str(sae.save(tmp_path / name))


def _spec_dir(tmp_path, d_in=HIDDEN, layer=1):
    if (tmp_path / f"spec_{d_in}_{layer}").exists():
        return str(tmp_path / f"spec_{d_in}_{layer}")
    sae = random_sae(d_in, 64, "standard", seed=0)
    spec = SteeringSpec([SparseIntervention.from_sae(sae, [0, 1], torch.ones(1, 2), "add", layer=layer)])
    return str(spec.save(tmp_path / f"spec_{d_in}_{layer}"))


# ----------------------------------------------------------------------------- errors before the model
@pytest.mark.parametrize("method", ["saif", "concise"])
def test_sae_of_another_width_or_layer_is_refused(method, tmp_path, capsys, no_model):
    out = str(tmp_path / "out")
    base = ["discover", method, "--instruction", "lowercase", "--out", out, "--device", "cpu"]
    err = _refused(base + ["--sae", _sae_dir(tmp_path, d_in=32, name="narrow")], capsys, "--sae", "32", str(HIDDEN))
    assert "hidden size" in err
    _refused(base + ["--sae", _sae_dir(tmp_path, layer=9, name="deep")], capsys, "--sae", "hook layer", "9")
    _refused(base + ["--sae", _sae_dir(tmp_path, layer=None, name="nolayer")], capsys, "--layer")
    _refused(base + ["--sae", _sae_dir(tmp_path), "--layer", str(LAYERS)], capsys, "--layer", str(LAYERS))


def test_missing_or_impossible_layer_is_refused(tmp_path, capsys, no_model):
    base = ["discover", "diff-means", "--instruction", "lowercase", "--out", str(tmp_path / "o"), "--device", "cpu"]
    err = _refused(base, capsys, "--layer")
    assert "layer=" not in err
    _refused(base + ["--layer", "7"], capsys, "--layer 7", f"{LAYERS} decoder layers")
    _refused(base + ["--layers", "1", "2", "--instruction", "Be terse."], capsys, "--validation-ids")
    _refused(["demo", "--methods", "diff-means", "--out", str(tmp_path / "d"), "--device", "cpu"], capsys, "--layer")
    _refused(["train-sae", "--layer", "5", "--out", str(tmp_path / "t"), "--device", "cpu"], capsys, "--layer 5")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused_while_parsing(value, tmp_path, capsys, no_model):
    out = ["--out", str(tmp_path / "o")]
    _refused(["discover", "diff-means", "--instruction", "x", "--layer", "1", f"--coefficient={value}", *out],
             capsys, "argument --coefficient", "finite")
    _refused(["discover", "concise", "--instruction", "x", f"--coefficient={value}", *out], capsys,
             "argument --coefficient", "finite")
    _refused(["discover", "saif", "--instruction", "x", f"--strength={value}", *out], capsys, "argument --strength")
    _refused(["eval", f"--ppl-ref={value}"], capsys, "argument --ppl-ref", "finite")
    _refused(["tune", "--steering", "s", *out, f"--bounds=0,{value}"], capsys, "argument --bounds", "finite")


def test_bogus_backend_is_refused_at_start(tmp_path, capsys, no_model, environment_backend):
    environment_backend("bogus")
    _refused(["generate", "--prompt", "Hi."], capsys, "PYSTEER_BACKEND='bogus'", "cuda, triton, reference")
    _refused(["discover", "diff-means", "--instruction", "x", "--layer", "1", "--out", str(tmp_path / "o")],
             capsys, "PYSTEER_BACKEND")
    _refused(["eval", "--limit", "1"], capsys, "PYSTEER_BACKEND")


def test_unknown_backend_flag_is_refused(capsys, no_model):
    _refused(["generate", "--prompt", "Hi.", "--backend", "bogus"], capsys, "--backend bogus", "reference")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_backend_or_device_without_cuda_is_refused_at_start(tmp_path, capsys, no_model, environment_backend):
    _refused(["generate", "--prompt", "Hi.", "--device", "cuda"], capsys, "--device cuda", "CUDA is not available")
    _refused(["generate", "--prompt", "Hi.", "--backend", "cuda"], capsys, "--backend cuda on device cpu")
    environment_backend("cuda")
    # without --steering too: every command that runs the model checks it
    _refused(["generate", "--prompt", "Hi."], capsys, "PYSTEER_BACKEND=cuda on device cpu")
    _refused(["demo", "--out", str(tmp_path / "d")], capsys, "PYSTEER_BACKEND=cuda")
    _refused(["train-sae", "--layer", "1", "--out", str(tmp_path / "t")], capsys, "PYSTEER_BACKEND=cuda")


def test_existing_outputs_are_refused_first(tmp_path, capsys, no_model):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _refused(["discover", "diff-means", "--instruction", "x", "--layer", "1", "--out", str(out)],
             capsys, f"--out {out}", "--overwrite")
    # --overwrite replaces only what the command writes
    _refused(["discover", "saif", "--instruction", "x", "--sae", _sae_dir(tmp_path), "--out", str(out),
              "--overwrite"], capsys, "--out", "keep.txt", "--overwrite")
    report = tmp_path / "report.json"
    report.write_text("{}")
    _refused(["eval", "--out", str(report), "--limit", "1"], capsys, f"--out {report}", "--overwrite")
    _refused(["eval", "--out", str(tmp_path), "--limit", "1"], capsys, "--out", "is a directory")
    _refused(["tune", "--steering", _spec_dir(tmp_path), "--out", str(out)], capsys, "--out", "--overwrite")
    assert (out / "keep.txt").read_text() == "mine" and report.read_text() == "{}"


def test_steering_spec_and_config_are_checked_against_the_model_first(tmp_path, capsys, no_model):
    _refused(["generate", "--prompt", "Hi.", "--steering", _spec_dir(tmp_path, d_in=32)], capsys,
             "--steering", "d_model=32")
    _refused(["generate", "--prompt", "Hi.", "--steering", _spec_dir(tmp_path, layer=6)], capsys,
             "--steering", "layer 6")
    _refused(["generate", "--prompt", "Hi.", "--steering", _spec_dir(tmp_path), "--config", "3"], capsys,
             "--config 3")
    _refused(["eval", "--limit", "1", "--steering", _spec_dir(tmp_path, d_in=32)], capsys, "--steering")
    _refused(["generate", "--prompt", "Hi.", "--config", "-1"], capsys, "argument --config")


def test_serve_checks_its_specs_and_limits_before_the_model_loads(tmp_path, capsys, no_model):
    pytest.importorskip("uvicorn")
    good = f"a={_spec_dir(tmp_path)}"
    _refused(["serve", "--steering", f"wide={_spec_dir(tmp_path, d_in=32)}"], capsys, "--steering wide=", "d_model=32")
    _refused(["serve", "--steering", f"missing={tmp_path / 'nowhere'}"], capsys, "--steering")
    _refused(["serve", "--steering", good, "--steering", good], capsys, "--steering", "twice")
    _refused(["serve", "--steering", "no-directory"], capsys, "NAME=DIR")
    _refused(["serve", "--port", "70000"], capsys, "argument --port")
    _refused(["serve", "--default-max-tokens", "90", "--max-tokens", "80"], capsys, "--default-max-tokens 90")


def test_other_arguments_checked_up_front(tmp_path, capsys, no_model):
    out = ["--out", str(tmp_path / "o")]
    _refused(["discover", "concise", "--instruction", "Use no adjectives.", "--sae", _sae_dir(tmp_path), *out],
             capsys, "--keyword")
    _refused(["discover", "saif", "--instruction", "x", "--sae", _sae_dir(tmp_path), "--n-features", "65", *out],
             capsys, "--n-features 65", "64")
    _refused(["discover", "diff-means", "--instruction", "x", "--layer", "1", "--batch-size", "0", *out],
             capsys, "argument --batch-size")
    _refused(["demo", "--types", "short", "short", *out], capsys, "--types")
    for level in ("0", "1.5", "nan"):
        _refused(["frontier", "--steering", str(tmp_path / "s"), "--type", "lowercase", "--significance", level, *out],
                 capsys, "argument --significance")
    _refused(["train-sae", "--layer", "1", "--corpus", str(tmp_path / "nowhere"), *out], capsys, "--corpus")
    _refused(["generate", "--prompt", "Hi.", "--steering", str(tmp_path / "nowhere")], capsys, "--steering")
    _refused(["discover", "saif", "--instruction", "x", "--sae", str(tmp_path / "nowhere"), *out], capsys,
             f"--sae {tmp_path / 'nowhere'}")


def test_missing_model_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pysteer.models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    nowhere = str(tmp_path / "nowhere")
    _refused(["generate", "--prompt", "Hi.", "--model", nowhere], capsys, f"--model {nowhere}")
    _refused(["eval", "--limit", "1", "--model", nowhere], capsys, f"--model {nowhere}")
    _refused(["discover", "diff-means", "--instruction", "x", "--layer", "1", "--out", str(tmp_path / "o"),
              "--model", nowhere], capsys, f"--model {nowhere}")


def test_info_shows_the_backend_variable(capsys, environment_backend):
    environment_backend(None)
    assert main(["info"]) == 0
    assert "PYSTEER_BACKEND: not set" in capsys.readouterr().out
    environment_backend("reference")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "PYSTEER_BACKEND: set to 'reference'" in out and "ops on cpu use: reference" in out
    environment_backend("bogus")
    assert main(["info"]) == 0
    assert "ops on cpu: error: PYSTEER_BACKEND='bogus' is not a backend" in capsys.readouterr().out


# ----------------------------------------------------------------------------- --instruction
def test_instruction_rule():
    lowercase = INSTRUCTION_TYPES[0]
    for spelling in ("lowercase", " LowerCase ", lowercase.instruction_id):
        got = resolve_instruction(spelling)
        assert got.text == lowercase.instruction_text and got.name == "lowercase"
        assert list(got.variants) == lowercase.variants() and got.keyword == lowercase.keyword
    short = resolve_instruction("short")  # the report's type, not discovery's list of the same name
    assert short.text == "Respond in fewer than 30 words." and short.instruction_id == "length_constraints:number_words"
    french = resolve_instruction("french")  # a discovery list that is no type
    assert french.text == "Your entire response should be in French." and french.keyword == "French"
    assert resolve_instruction("  Use lowercase, please. ") == ("Use lowercase, please.", None, None, None, None)


class _Reached(Exception):
    """Raised by a stand-in discovery function: the arguments it was given are recorded."""


@pytest.mark.parametrize("value", ["lowercase", "Answer in lowercase only."])
def test_instruction_means_the_same_in_every_discover_method(value, tmp_path, monkeypatch, no_model):
    import importlib

    # (``import pysteer.discovery.saif as m`` gives the function: the package exports it under that name)
    concise_module, dm_module, saif_module = (importlib.import_module(f"pysteer.discovery.{name}")
                                              for name in ("concise", "diff_in_means", "saif"))

    monkeypatch.setattr(pysteer.models, "load_model", lambda *a, **k: (None, None))
    seen = {}

    def record(method):
        def stand_in(model, tokenizer, *args, **kwargs):
            seen[method] = (args, kwargs)
            raise _Reached

        return stand_in

    monkeypatch.setattr(dm_module, "instruction_vectors", record("diff-means"))
    monkeypatch.setattr(saif_module, "saif", record("saif"))
    monkeypatch.setattr(concise_module, "concise", record("concise"))
    sae = _sae_dir(tmp_path)
    keyword = [] if value == "lowercase" else ["--keyword", "Lower"]
    for argv in (["diff-means", "--layer", "1"], ["saif", "--sae", sae], ["concise", "--sae", sae, *keyword]):
        with pytest.raises(_Reached):
            main(["discover", *argv, "--instruction", value, "--out", str(tmp_path / "o"), "--device", "cpu"])
    expected = resolve_instruction(value)
    assert seen["diff-means"][0][0] == expected.text
    assert seen["saif"][0][1] == expected.text and seen["saif"][1]["variants"] == expected.variants
    assert seen["concise"][0][1:3] == (expected.text, expected.keyword or "Lower")


def test_eval_and_tune_read_a_builtin_name_as_its_checker():
    from pysteer.evaluation.cli import instruction_ids

    assert instruction_ids(["lowercase", "punctuation:no_comma", "detectable_format:title"]) == \
        ["change_case:english_lowercase", "punctuation:no_comma", "detectable_format:title"]


# ----------------------------------------------------------------------------- the demo's examples
def _constructed_result(rewards: dict[str, dict[str, list[float]]]):
    """An ExperimentResult-like object for one type, from per-setting, per-label response rewards."""
    from pysteer.experiment.pipeline import _add_examples

    n = len(next(iter(next(iter(rewards.values())).values())))
    prompts = [SimpleNamespace(key=f"k{i}", text=lambda w, i=i: f"Request {i}." + (" Use lowercase." if w else ""))
               for i in range(n)]
    settings = {key: {label: {"scores": [{"followed": r >= 1, "responded": True, "degenerate": False,
                                          "quality": 0.5, "reward": r} for r in values],
                              "responses": [f"{label} answer {i}" for i in range(n)]}
                      for label, values in cells.items()} for key, cells in rewards.items()}
    _add_examples(settings, prompts)
    itype = SimpleNamespace(name="lowercase")
    return SimpleNamespace(types=[itype], methods=["dm", "saif"], evaluations={"lowercase": {"settings": settings}})


def test_demo_examples_show_best_and_worst_from_distinct_prompts_with_and_without_the_instruction():
    from pysteer.experiment.cli import format_examples
    from pysteer.experiment.report import choose_examples

    rewards = {"no_instruction": {"unsteered": [0.5] * 6, "dm": [0.5, 2.0, 0.5, 0.0, 1.0, 0.5],
                                  "saif": [0.5, 1.5, 0.5, 0.0, 1.0, 0.5]},
               "instruction": {"unsteered": [1.0] * 6, "dm": [2.0, 2.0, 1.0, 0.0, 1.5, 1.0],
                               "saif": [2.0, 1.5, 1.0, 0.5, 1.5, 1.0]}}
    result = _constructed_result(rewards)
    settings = result.evaluations["lowercase"]["settings"]
    picks = choose_examples(settings)
    # without: best prompt 1, worst prompt 3; with: best 0 (1 is shown already), worst 2 (3 is shown; ties -> earlier)
    assert picks == {"no_instruction": [("best", 1), ("worst", 3)], "instruction": [("best", 0), ("worst", 2)]}
    printed = format_examples(result)
    blocks = printed.split("\n\n")
    assert len(blocks) == 4
    assert len({block.splitlines()[0].split(": ", 1)[1] for block in blocks}) == 4  # four different prompts
    for words in ("without the instruction", "with the instruction", "best case", "worst case"):
        assert sum(words in block for block in blocks) == 2, words
    assert "'Request 1.'" in blocks[0] and "'Request 0. Use lowercase.'" in blocks[2]
    for block in blocks:  # every label answers the block's prompt
        index = block.splitlines()[0].split("'Request ")[1][0]
        for label in ("unsteered", "dm", "saif"):
            assert f"{label} answer {index}" in block
