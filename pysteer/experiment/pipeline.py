"""One experiment, shared by ``pysteer demo`` and the results report: discover, tune, evaluate.

For each instruction type (:mod:`.instructions`) and each method:

- ``diff-means`` (Stolfo et al.): the difference-in-means vector, added as ``h + s·‖v‖·u``,
  with the layer (among ``Budget.dm_layers``) and the strength s (among
  ``Budget.strengths``) read off the train frontier (:mod:`.frontier`): the highest train
  IFR within the report's quality bounds (:data:`~.frontier.REPORT_BOUNDS`) that beats
  the unsteered model by more than chance (:func:`~.frontier.sign_test` p ≤
  :data:`~.frontier.SIGNIFICANCE`), or no steering (strength 0) when none does — the
  paper's layer search, with a strength grid;
- ``saif``: SAIF's top latents with their score-proportional ``add`` weights, at the
  strength its train frontier chooses the same way;
- ``concise`` (Concise-SAE): 15 supportive + 15 opposing latents, whose coefficients
  are then tuned by the BoTorch tuner on the type's *train* prompts sent *without* the
  instruction: IFR maximised subject to the same bounds, the best feasible candidate kept,
  at the strength its train frontier chooses the same way;
- ``untuned-dm`` (:data:`~.names.UNTUNED`): the plain vector, projection form at z̄ at
  the experiment's layer, evaluated as the baseline tuning has to beat.

Discovery reads only the built-in queries that are not held-out requests. Each spec
is then evaluated on the type's *held-out* prompts in four settings — no instruction,
no instruction + steering, instruction, instruction + steering — by IFR (loose and
strict), RR, OQ, degenerate rate and both perplexity ratios (:func:`evaluate`), and each
method's spec is swept over the strengths on the held-out prompts without the instruction
(:func:`held_out_frontiers`: reported, never chosen from). :func:`run_experiment` does all
of it for every type and saves every spec it made.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from ..discovery import answer_vectors, concise, instruction_vectors, next_token_vectors, saif
from ..discovery.prompts import BASE_QUERIES, sample
from ..evaluation import (builtin_prompts, generate_for_configs, generate_responses, response_perplexity,
                          score_responses)
from ..evaluation.metrics import perplexity_ratio
from ..fileio import staged_directory
from ..patching import model_facts, steer
from ..sae import SAE, load_sae
from ..spec import SparseIntervention, SteeringSpec, stack_specs
from .errors import ExperimentError
from .instructions import InstructionType, get_type, resolve_types
from .names import BUDGET_NAMES, FRONTIER_PLOT, METHODS, SAE_METHODS, SETTINGS, TUNED_METHODS, UNSTEERED, UNTUNED
from .frontier import REPORT_BOUNDS, SIGNIFICANCE, Frontier, best_point, scaled, sign_test, sweep
from .report import choose_examples, response_score

__all__ = ["METHODS", "SAE_METHODS", "TUNED_METHODS", "SETTINGS", "Budget", "discovery_queries",
           "find_spec", "tune_spec", "discover", "stack_specs", "evaluate", "ExperimentResult",
           "run_experiment"]


@dataclass(frozen=True)
class Budget:
    """How much work each step does: discovery, tuning and evaluation sizes.

    ``batch_size`` is the number of prompts per generation batch; a generation that
    carries several methods' configurations (:func:`stack_specs`) holds that many
    prompts per method, so every method sees the same batches as it would alone.
    """

    n_pairs: int = 16              # diff-means (base, base + instruction) pairs; Concise-SAE pairs
    n_contents: int = 8            # SAIF: base queries each instruction variant follows
    pair_max_new_tokens: int = 48  # Concise-SAE: length of the texts the model writes itself
    tune_rounds: int = 8           # the first round is the template + Sobol points
    tune_q: int = 8                # candidates per round, generated in one batch
    tune_minibatch: int = 8        # train prompts per round
    tune_max_new_tokens: int = 32
    tune_restarts: int = 8         # acquisition optimiser restarts / raw samples per round
    tune_raw_samples: int = 256
    eval_max_new_tokens: int = 64
    n_heldout: int = 10            # held-out prompts per type (the built-in set has 10)
    batch_size: int = 32
    # Strengths s swept: diff-means adds s·‖v_ℓ‖·u, SAIF s × its weights, Concise-SAE s × its
    # tuned coefficients, and every held-out frontier scales the method's spec by s. Each method
    # chooses its s on ``validation`` train prompts answered at ``eval_max_new_tokens``
    # (none beating the unsteered model: s = 0); diff-means also its layer among ``dm_layers``
    # (empty: the experiment's layer only), and, for a type with a rewrite rule, whether to use
    # the vector read from answers at one of ``answer_layers`` instead (empty: never). That one
    # steers the prompt's positions only and takes its size from the prompt read-out's ‖v_ℓ‖,
    # so a strength means the same for both. For a type that forbids tokens, the vector read
    # where the model's next token is forbidden at one of ``next_token_layers`` is a third
    # candidate (every position, strength 1 = NEXT_TOKEN_UNIT × that v).
    strengths: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
    validation: int = 8
    dm_layers: tuple[int, ...] = ()
    answer_layers: tuple[int, ...] = ()
    next_token_layers: tuple[int, ...] = ()
    # Concise-SAE's search space: "grouped" (one strength for the supportive and one for the
    # opposing latents, times per-latent scales) or "full" (one coefficient per latent).
    tune_space: str = "grouped"

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if name == "tune_space":
                if value not in ("grouped", "full"):
                    raise ExperimentError(f"Budget.tune_space must be 'grouped' or 'full', got {value!r}")
            elif name in ("strengths", "dm_layers", "answer_layers", "next_token_layers"):
                if not isinstance(value, tuple) or (name == "strengths" and not value) or \
                        not all(isinstance(v, (int, float)) and v >= 0 for v in value):
                    raise ExperimentError(f"Budget.{name} must be a tuple of non-negative numbers"
                                          f"{' (at least one)' if name == 'strengths' else ''}, got {value!r}")
            elif not isinstance(value, int) or value < 1:
                raise ExperimentError(f"Budget.{name} must be a positive int, got {value!r}")

    @classmethod
    def demo(cls) -> "Budget":
        """Small: ``pysteer demo``'s 2 types × 3 methods in a few minutes on 2 CPU cores. Operating
        points on 10 train prompts (with fewer, one degenerate answer already breaks the 10 % bound),
        over the frontier's default strengths without the ends (0.25 does nothing, 3 breaks the text).
        No commas also tries the report's next-token vector (layer 27), which held out took it from
        0.2 to 0.7 within the bounds (reports/smollm2/)."""
        return cls(n_pairs=6, n_contents=4, pair_max_new_tokens=32, tune_rounds=3, tune_q=4,
                   tune_minibatch=4, tune_max_new_tokens=24, tune_restarts=2, tune_raw_samples=64,
                   eval_max_new_tokens=40, n_heldout=6, batch_size=32, strengths=(0.5, 0.75, 1.0, 1.5, 2.0),
                   validation=10, next_token_layers=(27,))

    @classmethod
    def report(cls) -> "Budget":
        """The results report's sizes: the defaults; operating points chosen on all 20 train
        prompts per type (with 8, one degenerate answer was already 12.5 %, over the 10 %
        bound), at the experiment's layer 15 (reports/smollm2/layer_search.json ranks it best,
        and the report that also searched 12 and 18 chose 15 for all 8 types); Concise-SAE's
        two group strengths get 6 rounds × q 6 (36 evaluations), on answers of 32 tokens
        (64 with the full space was tried and did worse held out:
        reports/smollm2/tried/train-at-eval-length-full-space/). Diff-means may also read its
        vector from answers at layer 12, on the prompt's positions: on train prompts that moved
        lowercase within the bounds where the prompt read-out at layers 9-27 and the answer
        read-out at every position did not (reports/smollm2/tried/response-contrast-on-train/).
        A type that forbids tokens (no commas) may also take the vector read where the model is
        about to write one, at layer 27: of layers 15-29 it moved no commas most within the
        bounds on train (next_token*.md there)."""
        return cls(tune_rounds=6, tune_q=6, validation=20, answer_layers=(12,), next_token_layers=(27,))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


BUDGETS = {name: getattr(Budget, name) for name in BUDGET_NAMES}


def discovery_queries() -> list[str]:
    """The built-in discovery queries minus every held-out request of the built-in prompts,
    so no method has seen a held-out prompt's content before it is evaluated on it."""
    held_out = {p.base_prompt for p in builtin_prompts("heldout")}
    return [q for q in BASE_QUERIES if q not in held_out]


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ExperimentError(f"unknown method {method!r}; the methods are {', '.join(METHODS)}")
    return method


# ---------------------------------------------------------------------------- discovery
def _train_frontier(model, tokenizer, spec: SteeringSpec, itype: InstructionType, budget: Budget,
                    label: str) -> Frontier:
    """``spec`` over ``budget.strengths`` on the type's first ``budget.validation`` train
    prompts sent without the instruction, answered at the evaluation's length (a length
    instruction read on shorter answers passes them all): what an operating point is chosen from."""
    validation = builtin_prompts("train", [itype.instruction_id])[:budget.validation]
    return sweep(model, tokenizer, spec, validation, budget.strengths, instruction_in_prompt=False,
                 max_new_tokens=budget.eval_max_new_tokens, label=label)


def _choose_operating_point(frontiers: Mapping[Any, Frontier], how: str) -> tuple[Any, dict[str, Any]]:
    """The train frontiers' best point within the report's bounds (degenerate: the looser of
    the bound and the unsteered model's own rate on those prompts) that beats the unsteered
    model by more than chance (:func:`~.frontier.best_point`), or strength 0 — no steering —
    when none does:
    (the chosen frontier's key or None, the ``metadata["operating_point"]`` record)."""
    key, point = best_point(frontiers, REPORT_BOUNDS)
    return key, {
        "strength": 0.0 if point is None else point.strength, "steers": point is not None,
        "chosen_by": how if point is not None else f"{how}: no strength beat the unsteered model within the bounds "
                                                   "by more than chance",
        "bounds": REPORT_BOUNDS.to_json(), "significance": SIGNIFICANCE,
        "sign_test_p": None if point is None else sign_test(point.outcomes["followed_loose"],
                                                            frontiers[key].unsteered.outcomes["followed_loose"]),
        "train_frontiers": {str(name): frontier.to_json() for name, frontier in frontiers.items()}}


def find_spec(method: str, model, tokenizer, itype: "str | InstructionType", *,
              sae: "SAE | str | None" = None, layer: Optional[int] = None, budget: Budget,
              seed: int = 0, progress: bool = True) -> SteeringSpec:
    """``method``'s untuned spec for ``itype`` at ``layer`` (SAE methods: default the SAE's).

    diff-means and SAIF specs come with their operating point chosen on train prompts
    (``metadata["operating_point"]``: the strength, whether it is within the report's
    bounds, the train frontiers it was read from); :func:`at_operating_point` applies it.
    diff-means' spec is the chosen layer's vector added at c = ‖v‖ (strength 1).
    SAIF and Concise-SAE specs carry their latents' statistics (and Concise-SAE its
    pairs) in ``metadata["discovery"]``; :func:`tune_spec` derives its box from them.
    """
    itype, method = get_type(itype), _check_method(method)
    common = dict(batch_size=budget.batch_size, progress=progress, seed=seed)
    if method in SAE_METHODS and sae is None:
        raise ExperimentError(f"method {method} needs an SAE (sae=...)")
    sae = None if sae is None else load_sae(sae)
    layer = int(layer) if layer is not None else None if sae is None else sae.hook_layer
    if layer is None:
        raise ExperimentError(f"method {method} needs layer= (or an SAE whose hook_name names its layer)")
    if method == "diff-means":
        # Stolfo et al. choose the layer on validation prompts; here the strength too, by the
        # train frontier of each candidate layer's vector (one batched generation per layer).
        candidates = sorted(set(budget.dm_layers) | {layer}) if budget.dm_layers else [layer]
        answer_layers = sorted(set(budget.answer_layers)) if itype.rewrite else []
        next_token_layers = sorted(set(budget.next_token_layers)) if itype.forbidden else []
        vectors = instruction_vectors(model, tokenizer, itype.instruction_text,
                                      sorted(set(candidates) | set(answer_layers)), discovery_queries(),
                                      n_prompts=budget.n_pairs, **common)
        specs: dict[Any, SteeringSpec] = {ell: vectors[ell].spec("add") for ell in candidates}
        specs.update(_answer_specs(model, tokenizer, itype, answer_layers, next_token_layers, vectors, budget))
        frontiers = {key: _train_frontier(model, tokenizer, candidate, itype, budget,
                                          key if isinstance(key, str) else f"layer {key}")
                     for key, candidate in tqdm(specs.items(), desc="diff-means candidates", disable=not progress,
                                                unit="vector")}
        chosen, point = _choose_operating_point(frontiers, "train frontier (vectors x strengths)")
        spec = specs[layer if chosen is None else chosen]  # none chosen: the experiment's layer
        spec.metadata["operating_point"] = point
    elif method == "saif":
        contents = sample(discovery_queries(), budget.n_contents, seed)
        result = saif(model, tokenizer, sae, itype.instruction_text, variants=itype.variants(),
                      contents=contents, layer=layer, **common)
        spec = result.spec()
        spec.metadata["strength"] = float(result.weights.sum())
        spec.metadata["discovery"] = {"features": result.table(), "variants": result.variants}
        _, spec.metadata["operating_point"] = _choose_operating_point(
            {"saif": _train_frontier(model, tokenizer, spec, itype, budget, "saif")}, "train frontier (strengths)")
    else:
        result = concise(model, tokenizer, sae, itype.instruction_text, itype.keyword,
                         n_pairs=budget.n_pairs, layer=layer, max_new_tokens=budget.pair_max_new_tokens,
                         **common)
        spec = result.spec()
        spec.metadata["discovery"] = {"features": result.table(),
                                      "pairs": [{"follow": a, "violate": b} for a, b in result.pairs]}
    spec.metadata.update(type=itype.name, instruction_id=itype.instruction_id)
    return spec


# The next-token vector's strength 1, as a fraction of its norm: on no commas' train prompts it
# turns within 0.5-1 × ‖v‖ (layer 27: 0.35 at 0.5, 0.85 at 0.75 with 5 % degenerate, 55 %
# degenerate at 1; reports/smollm2/tried/response-contrast-on-train/next_token_fine.md), so the
# strengths' grid, made for the prompt read-out, puts its 1 at 0.75 × ‖v‖.
NEXT_TOKEN_UNIT = 0.75


def _answer_specs(model, tokenizer, itype: InstructionType, answer_layers: Sequence[int],
                  next_token_layers: Sequence[int], prompt_vectors, budget: Budget) -> dict[str, SteeringSpec]:
    """The candidates read from the model's own answers to the discovery queries:
    ``{"answers, layer ℓ": spec}``, the vector of those answers against their rewrites by the
    type's rule, added on the prompt's positions at c = the prompt read-out's ‖v_ℓ‖ (strength 1)
    — it edits nothing the model writes, only the cache it reads: on train, every position
    looped (reports/smollm2/tried/); and ``{"next token, layer ℓ": spec}``, the vector read where
    the answers' next token is one the type forbids, added at every position at c = ``NEXT_TOKEN_UNIT``·‖v‖."""
    if not answer_layers and not next_token_layers:
        return {}
    questions = discovery_queries()
    own = generate_responses(model, tokenizer, questions, max_new_tokens=budget.eval_max_new_tokens,
                             batch_size=budget.batch_size)
    specs = {}
    if answer_layers:
        read = answer_vectors(model, tokenizer, questions, own, itype.rewrite_answer, answer_layers,
                              instruction=itype.instruction_text)
        for ell in answer_layers:
            spec = read[ell].spec("add", prompt_vectors[ell].norm, positions="prompt")
            spec.metadata["unit"] = {"prompt_read_out_norm": prompt_vectors[ell].norm, "rewrite": itype.rewrite}
            specs[f"answers, layer {ell}"] = spec
    if next_token_layers:
        try:
            read = next_token_vectors(model, tokenizer, questions, own, itype.forbids, next_token_layers,
                                      instruction=itype.instruction_text)
        except ValueError:  # the model never writes a forbidden token unsteered: nothing to steer away from
            read, next_token_layers = {}, []
        for ell in next_token_layers:
            spec = read[ell].spec("add", NEXT_TOKEN_UNIT * read[ell].norm)
            spec.metadata["unit"] = {"forbidden": itype.forbidden, "fraction_of_norm": NEXT_TOKEN_UNIT}
            specs[f"next token, layer {ell}"] = spec
    return specs


def untuned_spec(model, tokenizer, itype: "str | InstructionType", layer: int, budget: Budget, *,
                 seed: int = 0, progress: bool = True) -> SteeringSpec:
    """The plain difference-in-means vector a user gets from ``pysteer discover diff-means
    --layer LAYER``: the projection form at z̄, nothing chosen — what tuning must beat."""
    itype = get_type(itype)
    vector = instruction_vectors(model, tokenizer, itype.instruction_text, [layer], discovery_queries(),
                                 n_prompts=budget.n_pairs, batch_size=budget.batch_size, progress=progress,
                                 seed=seed)[layer]
    spec = vector.spec("project")
    spec.metadata.update(type=itype.name, instruction_id=itype.instruction_id, untuned=True)
    return spec


def at_operating_point(spec: SteeringSpec) -> SteeringSpec:
    """``spec`` scaled by the strength in its ``metadata["operating_point"]`` (as it is without one)."""
    point = spec.metadata.get("operating_point")
    if not point or point.get("strength") in (None, 1.0):
        return spec
    scaled_spec = scaled(spec, float(point["strength"]))
    scaled_spec.metadata["operating_point"] = {**point, "applied": True}
    return scaled_spec


def _saes_of(spec: SteeringSpec) -> dict[str, SAE]:
    """The TopK SAEs a spec already holds, by path, so reloading the spec does not read them again."""
    return {iv.sae_path: iv.sae for iv in spec.interventions
            if isinstance(iv, SparseIntervention) and iv.sae is not None and iv.sae_path}


def tune_spec(model, tokenizer, spec: SteeringSpec, itype: "str | InstructionType", budget: Budget, *,
              out_dir: "str | Path | None" = None, seed: int = 0, progress: bool = True) -> SteeringSpec:
    """The tuner's best configuration of ``spec`` for ``itype`` within the report's bounds.

    BoTorch maximises IFR (loose) subject to the report's quality bounds
    (:data:`~.frontier.REPORT_BOUNDS`: degenerate rate, perplexity ratio to the unsteered
    model's own responses under the prompt with the instruction) over ``budget.tune_space``
    (box from ``metadata["discovery"]["features"]`` when present), measured by the batched
    objective on the type's train prompts sent without the instruction, the template's own
    coefficients as the first candidate. The result is the best *feasible* candidate, its
    operating strength chosen on its train frontier as diff-means' and SAIF's are
    (``metadata["operating_point"]``: 1 is the tuned point, 0 no steering; ``tuner``: the
    tuner's own reading of it).
    The tuner's files (``history.json``, ``best_spec/``, ``reward.png``) go to ``out_dir``
    (default: a temporary directory, removed afterwards).
    """
    from ..tuner import AcquisitionOptions, BatchedObjective, grouped_search_space, search_space, tune

    itype = get_type(itype)
    features = spec.metadata.get("discovery", {}).get("features")
    stats = None
    if features and len(spec.layers) == 1:
        stats = {"layer": spec.layers[0], "features": features}
    space = search_space(spec, stats)
    if budget.tune_space == "grouped":
        space = grouped_search_space(space, groups="sign")
    prompts = builtin_prompts("train", [itype.instruction_id])
    # The degenerate constraint is the chooser's (REPORT_BOUNDS.holds): the looser of the bound
    # and the unsteered model's own rate, here on the tuner's prompts at the tuner's length.
    unsteered = _unsteered_outcomes(model, tokenizer, prompts, budget.tune_max_new_tokens, budget.batch_size)
    constraints = REPORT_BOUNDS.constraints(unsteered)
    objective = BatchedObjective(model, tokenizer, space, prompts, minibatch=budget.tune_minibatch,
                                 max_new_tokens=budget.tune_max_new_tokens, seed=seed,
                                 instruction_in_prompt=False, batch_size=budget.batch_size * budget.tune_q)
    options = AcquisitionOptions(num_restarts=budget.tune_restarts, raw_samples=budget.tune_raw_samples)
    settings = {**objective.describe(), "type": itype.name, "instruction_id": itype.instruction_id,
                "space": budget.tune_space, "unsteered_degenerate_rate": unsteered["degenerate_rate"]}
    with tempfile.TemporaryDirectory(prefix="pysteer-tune-") as scratch:
        directory = Path(out_dir) if out_dir is not None else Path(scratch)
        result = tune(objective, space, directory, rounds=budget.tune_rounds, q=budget.tune_q, seed=seed,
                      initial=space.vector().unsqueeze(0), progress=progress, options=options,
                      settings=settings, objective="ifr_loose", constraints=constraints)
        tuned = SteeringSpec.load(result.best_spec_path, saes=_saes_of(spec))
    # The tuner's point is read on minibatches of short answers; its strength (1 = the tuned
    # coefficients) is chosen as diff-means' and SAIF's are, on the train frontier.
    _, point = _choose_operating_point({"concise": _train_frontier(model, tokenizer, tuned, itype, budget, "concise")},
                                       f"BoTorch qLogNEI under the bounds ({budget.tune_space} space), "
                                       "then its train frontier")
    reading = {k: result.best.metrics.get(k) for k in ("ifr_loose", "degenerate_rate", "ppl_ratio",
                                                       "ppl_ratio_instructed")}
    tuned.metadata["operating_point"] = {**point, "tuner": {
        "feasible": bool(result.feasible), **reading, "constraints": {k: list(v) for k, v in constraints.items()},
        "unsteered_degenerate_rate": unsteered["degenerate_rate"]}}
    return tuned


def _unsteered_outcomes(model, tokenizer, prompts: list, max_new_tokens: int, batch_size: int) -> dict[str, Any]:
    """The unsteered model's degenerate rate on ``prompts`` sent without the instruction, as the
    outcomes :meth:`~.frontier.QualityBounds.constraints` reads."""
    responses = generate_responses(model, tokenizer, [p.text(False) for p in prompts], batch_size=batch_size,
                                   max_new_tokens=max_new_tokens)
    return {"degenerate_rate": score_responses(prompts, responses, instruction_in_prompt=False).degenerate_rate}


def discover(method: str, model, tokenizer, itype: "str | InstructionType", *,
             sae: "SAE | str | None" = None, layer: Optional[int] = None, budget: Budget, seed: int = 0,
             progress: bool = True, tune_dir: "str | Path | None" = None) -> SteeringSpec:
    """``method``'s spec for ``itype`` at its operating point: :func:`find_spec`, then
    :func:`tune_spec` for Concise-SAE, then :func:`at_operating_point`."""
    spec = find_spec(method, model, tokenizer, itype, sae=sae, layer=layer, budget=budget, seed=seed,
                     progress=progress)
    if method in TUNED_METHODS:
        spec = tune_spec(model, tokenizer, spec, itype, budget, out_dir=tune_dir, seed=seed, progress=progress)
    return at_operating_point(spec)


# ---------------------------------------------------------------------------- evaluation
def _cell(report, responses: list[str]) -> dict[str, Any]:
    return {"ifr_loose": report.ifr_loose, "ifr_strict": report.ifr_strict, "rr": report.rr, "oq": report.oq,
            "degenerate_rate": report.degenerate_rate, "mean_perplexity": report.mean_perplexity,
            "n": report.n, "scores": [response_score(score) for score in report.scores],
            "responses": list(responses)}


def _add_examples(settings: dict[str, dict[str, Any]], prompts: list) -> None:
    """Every cell's ``examples``: the responses :func:`~.report.choose_examples` picks, the
    same prompts for every method, so they read side by side."""
    with_instruction = dict(SETTINGS)
    for key, picks in choose_examples(settings).items():
        for cell in settings[key].values():
            cell["examples"] = [{"case": case, "key": prompts[i].key, "prompt": prompts[i].text(with_instruction[key]),
                                 "response": cell["responses"][i], **cell["scores"][i]} for case, i in picks]


@torch.no_grad()
def evaluate(model, tokenizer, specs_by_method: Mapping[str, SteeringSpec], itype: "str | InstructionType",
             budget: Budget, *, progress: bool = False) -> dict[str, Any]:
    """IFR / RR / OQ of ``itype``'s held-out prompts in the four settings, for every method.

    Returns ``{"type", "instruction_id", "prompt_keys", "methods", "stacks", "seconds",
    "settings": {"no_instruction" | "instruction": {"unsteered" | method: cell}}}``; a
    cell holds ``ifr_loose``, ``ifr_strict``, ``rr``, ``oq``, ``degenerate_rate``,
    ``mean_perplexity`` (under the unsteered model), ``n``, every response and its
    ``scores``, and the ``examples`` shown (:func:`~.report.choose_examples`: the best and
    the worst case for steering). The unsteered cells are generated once for all
    methods; the methods share generations as far as :func:`stack_specs` allows.
    """
    itype = get_type(itype)
    start_time = time.perf_counter()
    prompts = builtin_prompts("heldout", [itype.instruction_id])[:budget.n_heldout]
    methods = list(specs_by_method)
    stacks = stack_specs(specs_by_method)
    bar = tqdm(total=len(SETTINGS) * (1 + len(stacks)), desc=f"evaluate {itype.name}", unit="generation",
               disable=not progress, dynamic_ncols=True)
    settings: dict[str, dict[str, Any]] = {}
    try:
        for key, with_instruction in SETTINGS:
            texts = [p.text(with_instruction) for p in prompts]
            responses = {UNSTEERED: generate_responses(model, tokenizer, texts, batch_size=budget.batch_size,
                                                       max_new_tokens=budget.eval_max_new_tokens)}
            bar.update(1)
            for spec, names in stacks:
                with steer(model, spec) as steering:
                    # Each batch of prompts goes once per configuration into ONE generation.
                    by_config, _ = generate_for_configs(model, tokenizer, texts, steering=steering,
                                                        configs=range(len(names)), batch_size=budget.batch_size,
                                                        max_new_tokens=budget.eval_max_new_tokens)
                    responses.update(zip(names, by_config))
                bar.update(1)
            # Every cell's perplexity in one pass under the unsteered model (nothing is attached
            # now); responses to the same prompt share its prefill.
            labels = [UNSTEERED] + methods
            flat = [r for label in labels for r in responses[label]]
            ppl = response_perplexity(model, tokenizer, texts * len(labels), flat, batch_size=budget.batch_size)
            # The instructed reference (frontier module): the same responses under the prompt
            # with the instruction; the same numbers when the instruction was sent.
            instructed = [p.prompt for p in prompts]
            ppl_instructed = ppl if with_instruction else response_perplexity(
                model, tokenizer, instructed * len(labels), flat, batch_size=budget.batch_size)
            n = len(prompts)
            settings[key] = {}
            for i, label in enumerate(labels):
                rows = slice(i * n, (i + 1) * n)
                report = score_responses(prompts, responses[label], instruction_in_prompt=with_instruction,
                                         perplexities=ppl[rows])
                settings[key][label] = _cell(report, responses[label])
                settings[key][label]["ppl_ratio"] = perplexity_ratio(ppl[rows], ppl[:n])
                settings[key][label]["ppl_ratio_instructed"] = perplexity_ratio(ppl_instructed[rows],
                                                                                ppl_instructed[:n])
    finally:
        bar.close()
    _add_examples(settings, prompts)
    return {"type": itype.name, "instruction_id": itype.instruction_id, "prompt_keys": [p.key for p in prompts],
            "methods": methods, "stacks": [names for _, names in stacks], "settings": settings,
            "seconds": round(time.perf_counter() - start_time, 2)}


def held_out_frontiers(model, tokenizer, specs_by_method: Mapping[str, SteeringSpec],
                       itype: "str | InstructionType", budget: Budget) -> dict[str, Frontier]:
    """Each method's frontier on ``itype``'s held-out prompts sent without the instruction:
    its spec (before the operating point's strength) over ``budget.strengths``, one batched
    generation per method. Reported only: nothing is chosen from it."""
    itype = get_type(itype)
    prompts = builtin_prompts("heldout", [itype.instruction_id])[:budget.n_heldout]
    return {method: sweep(model, tokenizer, spec, prompts, budget.strengths, instruction_in_prompt=False,
                          max_new_tokens=budget.eval_max_new_tokens, batch_size=budget.batch_size, label=method)
            for method, spec in specs_by_method.items()}


# ---------------------------------------------------------------------------- the experiment
@dataclass
class ExperimentResult:
    """What :func:`run_experiment` measured, where it saved the specs, and how long it took."""

    types: list[InstructionType]
    methods: list[str]
    budget: Budget
    evaluations: dict[str, dict[str, Any]]        # type name -> evaluate()'s dict
    spec_paths: dict[str, dict[str, str]]         # type name -> method -> spec directory
    timings: dict[str, dict[str, Any]]            # type name -> {"discover": {m: s}, "tune": {m: s}, "eval": s}
    layers: dict[str, int] = field(default_factory=dict)
    seed: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    sae: dict[str, Any] = field(default_factory=dict)
    out_dir: Optional[str] = None
    carried: dict[str, str] = field(default_factory=dict)  # type name -> the results.json it was carried from

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "ExperimentResult":
        """A result back from its :meth:`to_json` dict (with the responses), e.g. to carry types over."""
        known = {f.name for f in dataclasses.fields(Budget)}
        budget = Budget(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc["budget"].items() if k in known})
        return cls([get_type(t["name"]) for t in doc["types"]], list(doc["methods"]), budget,
                   dict(doc["evaluations"]), dict(doc["spec_paths"]), dict(doc["timings"]), dict(doc.get("layers", {})),
                   int(doc.get("seed", 0)), dict(doc.get("model") or {}), dict(doc.get("sae") or {}),
                   doc.get("out_dir"), dict(doc.get("carried") or {}))

    def carry_over(self, earlier: "ExperimentResult", source: str) -> "ExperimentResult":
        """This result with ``earlier``'s types that it did not run added back, in the report's
        order, each marked as carried from ``source``: for a re-run of only the types a change
        can affect. Refused unless both ran the same methods on the same model, SAE and seed."""
        for what in ("methods", "model", "sae", "seed"):
            if getattr(self, what) != getattr(earlier, what):
                raise ExperimentError(f"cannot carry types over: the earlier run's {what} differ "
                                      f"({getattr(earlier, what)!r} vs {getattr(self, what)!r})")
        mine = {t.name for t in self.types}
        carried = [t for t in earlier.types if t.name not in mine]
        order = [t.name for t in earlier.types] + [t.name for t in self.types if t.name not in
                                                   {e.name for e in earlier.types}]
        by_name = {t.name: t for t in [*self.types, *carried]}

        def pick(earlier_table: dict, own_table: dict) -> dict:
            return {n: (own_table if n in mine else earlier_table)[n] for n in order}
        return dataclasses.replace(
            self, types=[by_name[n] for n in order],
            evaluations=pick(earlier.evaluations, self.evaluations),
            spec_paths=pick(earlier.spec_paths, self.spec_paths), timings=pick(earlier.timings, self.timings),
            layers=pick(earlier.layers, self.layers),
            carried={t.name: earlier.carried.get(t.name, source) for t in carried})

    def rows(self) -> list[dict[str, Any]]:
        """One row per (type, setting, method or ``"unsteered"``) with the cell's metrics."""
        rows = []
        for itype in self.types:
            evaluation = self.evaluations[itype.name]
            for key, with_instruction in SETTINGS:
                for label, cell in evaluation["settings"][key].items():
                    rows.append({"type": itype.name, "instruction_id": itype.instruction_id, "setting": key,
                                 "instruction_in_prompt": with_instruction, "method": label,
                                 "steered": label != UNSTEERED,
                                 **{k: cell.get(k) for k in ("ifr_loose", "ifr_strict", "rr", "oq",
                                                             "degenerate_rate", "mean_perplexity", "ppl_ratio",
                                                             "ppl_ratio_instructed", "n")}})
        return rows

    def frontiers(self) -> dict[str, dict[str, Frontier]]:
        """``{type: {method: held-out Frontier}}``."""
        return {name: {m: Frontier.from_json(doc) for m, doc in ev.get("frontiers", {}).items()}
                for name, ev in self.evaluations.items()}

    def operating_strengths(self) -> dict[str, dict[str, Optional[float]]]:
        """``{type: {method: the strength chosen on train prompts}}``."""
        return {name: {m: point.get("strength") for m, point in ev.get("operating_points", {}).items()}
                for name, ev in self.evaluations.items()}

    def plot_frontiers(self, path: "str | Path") -> Path:
        """The held-out frontiers of every type and method as one PNG (:func:`~.frontier.plot_frontiers`)."""
        from .frontier import plot_frontiers

        return plot_frontiers(self.frontiers(), path, REPORT_BOUNDS, self.operating_strengths(),
                              title="held-out prompts, without the instruction")

    def total_seconds(self) -> dict[str, float]:
        """Seconds spent discovering, tuning and evaluating, over all types."""
        totals = {"discover": 0.0, "tune": 0.0, "frontier": 0.0, "eval": 0.0}
        for timing in self.timings.values():
            totals["discover"] += sum(timing["discover"].values())
            totals["tune"] += sum(timing["tune"].values())
            totals["frontier"] += timing.get("frontier", 0.0)
            totals["eval"] += timing["eval"]
        return {k: round(v, 2) for k, v in totals.items()}

    def to_json(self, responses: bool = True) -> dict[str, Any]:
        """The whole result as JSON: settings, ``rows``, ``targets``, evaluations, specs, timings."""
        from .report import targets

        evaluations = self.evaluations
        if not responses:
            evaluations = {name: {**ev, "settings": {k: {label: {f: v for f, v in cell.items() if f != "responses"}
                                                         for label, cell in cells.items()}
                                                     for k, cells in ev["settings"].items()}}
                           for name, ev in evaluations.items()}
        return {"model": self.model, "sae": self.sae, "seed": self.seed, "budget": self.budget.to_json(),
                "types": [t.to_json() for t in self.types], "methods": self.methods, "layers": self.layers,
                "rows": self.rows(), "targets": targets(self), "evaluations": evaluations,
                "spec_paths": self.spec_paths, "timings": self.timings, "total_seconds": self.total_seconds(),
                "out_dir": self.out_dir, "carried": self.carried}


def _sae_table(saes: "SAE | str | Path | Mapping[int, Any] | None") -> dict[int, SAE]:
    """{layer: SAE} from one SAE (at its hook layer), a {layer: SAE or path} mapping, or None."""
    if saes is None:
        return {}
    if isinstance(saes, Mapping):
        return {int(layer): load_sae(sae) for layer, sae in saes.items()}
    sae = load_sae(saes)
    if sae.hook_layer is None:
        raise ExperimentError(f"{sae.source}: the SAE's hook_name names no layer; pass {{layer: sae}}")
    return {sae.hook_layer: sae}


def _layers(types: list[InstructionType], layers: "int | Mapping[str, int] | None",
            table: dict[int, SAE], methods: list[str]) -> dict[str, int]:
    if layers is None:
        if not table:
            raise ExperimentError("no SAE and no layers: pass layers= (an int or {type: layer})")
        layers = next(iter(table))  # one SAE: its layer; several: the first given
    chosen = {t.name: int(layers if isinstance(layers, int) else layers[t.name]) for t in types}
    if any(m in SAE_METHODS for m in methods):
        missing = {name: layer for name, layer in chosen.items() if layer not in table}
        if missing:
            raise ExperimentError(f"no SAE at layer(s) {sorted(set(missing.values()))} (for {sorted(missing)}); "
                                  f"SAEs are given for layers {sorted(table)}")
    return chosen


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def run_experiment(model, tokenizer, types: "Sequence[str | InstructionType] | None",
                   methods: Sequence[str] = METHODS,
                   saes: "SAE | str | Path | Mapping[int, Any] | None" = None,
                   budget: Union[Budget, str] = "report", out_dir: "str | Path" = "pysteer-experiment", *,
                   layers: "int | Mapping[str, int] | None" = None, seed: int = 0, overwrite: bool = False,
                   progress: bool = True) -> ExperimentResult:
    """:func:`discover` + :func:`evaluate` for every type × method; specs saved under ``out_dir``.

    ``saes``: one SAE (its hook layer is used for every type) or ``{layer: SAE}``;
    ``layers`` picks each type's layer (an int for all, or ``{type: layer}``; default the
    SAE's, or the first of several). ``out_dir`` ends up holding ``<type>/<method>/``
    (the evaluated spec), ``<type>/<method>.tuning/`` (the tuner's files) and
    ``results.json`` + ``results.md`` (:func:`~pysteer.experiment.report.write_report`).
    It is written as a whole: an existing non-empty ``out_dir`` is refused unless
    ``overwrite``, and is replaced only when the experiment succeeds.
    """
    from .report import write_report

    types = resolve_types(types)
    methods = [_check_method(m) for m in methods]
    if not methods or len(set(methods)) != len(methods):
        raise ExperimentError(f"methods must be distinct and at least one, got {methods}")
    budget = BUDGETS[budget]() if isinstance(budget, str) else budget
    table = _sae_table(saes)
    chosen = _layers(types, layers, table, methods)
    out = Path(out_dir)
    torch.manual_seed(seed)
    evaluations: dict[str, dict] = {}
    spec_paths: dict[str, dict[str, str]] = {}
    timings: dict[str, dict[str, Any]] = {}
    with staged_directory(out, overwrite) as staging:
        for n, itype in enumerate(types, start=1):
            layer = chosen[itype.name]
            timing: dict[str, Any] = {"discover": {}, "tune": {}, "frontier": 0.0, "eval": 0.0}
            bases: dict[str, SteeringSpec] = {}   # what each method's frontier scales
            specs: dict[str, SteeringSpec] = {}   # each method at its operating point
            for method in methods:
                _log(progress, f"[{n}/{len(types)}] {itype.name}: {method} at layer {layer}")
                start = time.perf_counter()
                spec = find_spec(method, model, tokenizer, itype, sae=table.get(layer), layer=layer,
                                 budget=budget, seed=seed, progress=progress)
                timing["discover"][method] = round(time.perf_counter() - start, 2)
                if method in TUNED_METHODS:
                    start = time.perf_counter()
                    spec = tune_spec(model, tokenizer, spec, itype, budget, seed=seed, progress=progress,
                                     out_dir=staging / itype.name / f"{method}.tuning")
                    timing["tune"][method] = round(time.perf_counter() - start, 2)
                bases[method], specs[method] = spec, at_operating_point(spec)
                specs[method].save(staging / itype.name / method)
                spec_paths.setdefault(itype.name, {})[method] = str(out / itype.name / method)
            # The baseline tuning has to beat (target c): the plain vector at the experiment's layer.
            specs[UNTUNED] = untuned_spec(model, tokenizer, itype, layer, budget, seed=seed, progress=False)
            specs[UNTUNED].save(staging / itype.name / UNTUNED)
            spec_paths[itype.name][UNTUNED] = str(out / itype.name / UNTUNED)
            _log(progress, f"[{n}/{len(types)}] {itype.name}: frontiers and evaluation on held-out prompts")
            start = time.perf_counter()
            frontiers = held_out_frontiers(model, tokenizer, bases, itype, budget)
            timing["frontier"] = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
            evaluations[itype.name] = evaluate(model, tokenizer, specs, itype, budget, progress=progress)
            evaluations[itype.name]["frontiers"] = {m: f.to_json() for m, f in frontiers.items()}
            evaluations[itype.name]["operating_points"] = {
                m: {k: v for k, v in bases[m].metadata["operating_point"].items() if k != "train_frontiers"}
                for m in methods}
            timing["eval"] = round(time.perf_counter() - start, 2)
            timings[itype.name] = timing
        facts = model_facts(model)
        sae_info = {str(layer): {"source": sae.source, "architecture": sae.architecture, "d_sae": sae.d_sae,
                                 "k": sae.k} for layer, sae in table.items()}
        result = ExperimentResult(types, methods, budget, evaluations, spec_paths, timings, chosen, seed,
                                  {k: facts.get(k) for k in ("name", "hidden_size", "num_hidden_layers")},
                                  sae_info, str(out))
        write_report(result, staging / "results.json", staging / "results.md")
        result.plot_frontiers(staging / FRONTIER_PLOT)
    return result
