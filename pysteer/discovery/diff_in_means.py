"""Difference-in-means instruction vectors (Stolfo et al., arXiv 2410.12877).

For pairs of prompts with and without an instruction (chat template applied,
generation prompt added), let x_ℓ^with, x_ℓ^without [D] be the residual after decoder
layer ℓ at the last prompt token. Then::

    v_ℓ = mean_p (x_ℓ^with,p − x_ℓ^without,p)        [D]
    u_ℓ = v_ℓ / ‖v_ℓ‖                                 [D], unit
    z̄_ℓ = mean_p (x_ℓ^with,p · u_ℓ)                   scalar

and steer every position h [D] at layer ℓ with either

    add:      h' = h + c·u_ℓ               (fixed c; c < 0 excludes, e.g. a keyword)
    project:  h' = h + (z̄_ℓ − h·u_ℓ)·u_ℓ    (sets the component along u_ℓ to its mean
                                             value on prompts that carry the instruction)

The same v can be read from *answers* instead of prompts (:func:`answer_vectors`): for
answers a_p to questions q_p and a rule R that makes any answer comply while keeping its
words (``str.lower`` for "use only lowercase letters"), x̄_ℓ(a | q) [D] the residual after
layer ℓ averaged over the tokens of a, read after the chat-templated q::

    v_ℓ = mean_p (x̄_ℓ(R(a_p) | q_p) − x̄_ℓ(a_p | q_p))

— what changes in the residual while the model reads an answer that complies instead of its
own. It reaches instructions the model cannot follow when told (its own instructed answers
then do not comply, so no pair of prompts or texts it writes carries the difference).

For an instruction that forbids tokens (no commas), :func:`next_token_vectors` reads where
the model decides: with x_ℓ,t the residual after layer ℓ at answer position t (which predicts
token t+1; t = −1 is the last prompt token), F_p the positions of a_p whose next token is
forbidden and A_p the others::

    v_ℓ = mean_p (mean_{t∈A_p} x_ℓ,t − mean_{t∈F_p} x_ℓ,t)      over answers with both

— away from "a forbidden token comes next".

:func:`layer_search` picks ℓ among candidate layers (from n_layers // 5 upward) by
instruction-following accuracy on validation prompts, disqualifying layers whose
outputs degenerate; with ``scales`` it also picks the coefficient per layer (multiples
of ‖v_ℓ‖ or z̄_ℓ), scoring all of a layer's coefficients in one batched generation. :func:`compose` stacks two instructions' vectors (possibly at
different layers); :func:`transfer` moves a spec to another model of the same width
(e.g. from an instruction-tuned model to its base model).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import SteeringSpecError
from ..patching import decoder_layers, model_facts
from ..spec import DenseIntervention, SteeringSpec
from ..patching.capture import residuals_after
from ..evaluation.metrics import prompt_token_ids
from .collect import collect_activations
from .prompts import BASE_QUERIES, sample, with_instruction

__all__ = ["DiffMeanResult", "diff_in_means", "instruction_vectors", "answer_vectors", "next_token_vectors",
           "LayerScore", "LayerSearch",
           "EvaluationScorer", "layer_search", "default_candidate_layers", "compose", "transfer", "evaluation_scorer"]


def _facts(model: nn.Module) -> dict[str, Any]:
    facts = model_facts(model)
    return {key: facts.get(key) for key in ("name", "hidden_size", "num_hidden_layers")}


@dataclass
class DiffMeanResult:
    """One layer's instruction vector: ``vector`` v [D], ``direction`` u [D], ``z_bar`` z̄."""

    layer: int
    vector: torch.Tensor
    direction: torch.Tensor
    z_bar: float
    n_pairs: int
    instruction: Optional[str] = None
    model: dict[str, Any] = field(default_factory=dict)
    read_out: str = "prompt"  # "prompt": the last prompt token (Stolfo et al.); "answers": :func:`answer_vectors`

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    @classmethod
    def from_activations(cls, layer: int, x_with: torch.Tensor, x_without: torch.Tensor,
                         **kwargs: Any) -> "DiffMeanResult":
        """v = mean(x_with − x_without), u = v/‖v‖, z̄ = mean(x_with·u); inputs [P, D]."""
        if x_with.shape != x_without.shape or x_with.ndim != 2:
            raise ValueError(f"x_with and x_without must be aligned [pairs, D] tensors, got "
                             f"{tuple(x_with.shape)} and {tuple(x_without.shape)}")
        x_with, x_without = x_with.double(), x_without.double()
        vector = (x_with - x_without).mean(0)
        norm = vector.norm()
        if not torch.isfinite(norm) or norm == 0:
            raise ValueError(f"layer {layer}: the difference in means is zero or not finite; the "
                             f"two sides of the pairs give the same residuals")
        direction = vector / norm
        z_bar = float((x_with @ direction).mean())
        return cls(int(layer), vector.float(), direction.float(), z_bar, int(x_with.shape[0]), **kwargs)

    def spec(self, mode: str = "project", coefficient: Optional[float] = None,
             positions: str = "all") -> SteeringSpec:
        """A one-configuration spec: ``add`` with c = ``coefficient`` (default ‖v‖, i.e. add v),
        or ``project`` with coefficient z̄ (or ``coefficient`` to override z̄)."""
        if mode not in ("add", "project"):
            raise ValueError(f"mode must be 'add' or 'project', got {mode!r}")
        if coefficient is None:
            coefficient = self.norm if mode == "add" else self.z_bar
        iv = DenseIntervention(self.layer, self.direction.unsqueeze(0), [[float(coefficient)]], mode)
        meta = {"method": "diff_in_means", "instruction": self.instruction, "mode": mode,
                "layer": self.layer, "z_bar": self.z_bar, "norm": self.norm, "n_pairs": self.n_pairs,
                "read_out": self.read_out}
        return SteeringSpec([iv], positions=positions, model=dict(self.model), metadata=meta)


def diff_in_means(model: nn.Module, tokenizer, with_prompts: Sequence[str],
                  without_prompts: Sequence[str], layers: Sequence[int], *, chat: bool = True,
                  batch_size: int = 8, progress: bool = True,
                  instruction: Optional[str] = None) -> dict[int, DiffMeanResult]:
    """Instruction vectors at each of ``layers`` from aligned prompt pairs (see module doc)."""
    if len(with_prompts) != len(without_prompts) or not with_prompts:
        raise ValueError(f"with_prompts and without_prompts must be non-empty and aligned, got "
                         f"{len(with_prompts)} and {len(without_prompts)}")
    kwargs = dict(position="last", chat=chat, batch_size=batch_size, progress=progress)
    acts_with = collect_activations(model, tokenizer, with_prompts, layers, desc="with instruction", **kwargs)
    acts_without = collect_activations(model, tokenizer, without_prompts, layers,
                                       desc="without instruction", **kwargs)
    facts = _facts(model)
    return {layer: DiffMeanResult.from_activations(layer, acts_with[layer], acts_without[layer],
                                                   instruction=instruction, model=facts)
            for layer in acts_with}


def instruction_vectors(model: nn.Module, tokenizer, instruction: str, layers: Sequence[int],
                        base_prompts: Optional[Sequence[str]] = None, *, n_prompts: Optional[int] = None,
                        placement: str = "after", seed: int = 0, **kwargs: Any) -> dict[int, DiffMeanResult]:
    """:func:`diff_in_means` with pairs (base, base + instruction) from ``base_prompts``
    (default: the built-in queries)."""
    bases = sample(base_prompts or BASE_QUERIES, n_prompts, seed)
    withs = [with_instruction(b, instruction, placement) for b in bases]
    return diff_in_means(model, tokenizer, withs, bases, layers, instruction=instruction, **kwargs)


@torch.no_grad()
def _residuals_after_question(model: nn.Module, tokenizer, question: str, answer_ids: Sequence[int],
                              layers: Sequence[int], chat: bool) -> tuple[dict[int, torch.Tensor], int]:
    """The residuals after ``layers`` of the chat-templated ``question`` followed by ``answer_ids``,
    and the number of prompt tokens before the answer."""
    prompt_ids = prompt_token_ids(tokenizer, question, chat)
    ids = torch.tensor([prompt_ids + list(answer_ids)], device=next(model.parameters()).device)
    return residuals_after(model, ids, torch.ones_like(ids), layers), len(prompt_ids)


def answer_vectors(model: nn.Module, tokenizer, questions: Sequence[str], answers: Sequence[str],
                   rewrite: Callable[[str], str], layers: Sequence[int], *, chat: bool = True,
                   instruction: Optional[str] = None) -> dict[int, DiffMeanResult]:
    """Vectors read from answers (module doc): ``rewrite(answer)`` against ``answer``, each
    averaged over its own tokens after its question. Pairs whose answer is blank are left out;
    a rewrite that changes none of the answers is refused (there is nothing to read)."""
    if len(questions) != len(answers) or not questions:
        raise ValueError(f"questions and answers must be non-empty and aligned, got {len(questions)} "
                         f"and {len(answers)}")
    pairs = [(q, a, rewrite(a)) for q, a in zip(questions, answers) if a.strip()]
    if not pairs or all(a == r for _, a, r in pairs):
        raise ValueError("the rewrite changes none of the answers: there is no difference to read")
    layers = [int(layer) for layer in layers]
    sides: dict[str, dict[int, list[torch.Tensor]]] = {"own": {ell: [] for ell in layers},
                                                      "rewritten": {ell: [] for ell in layers}}
    for question, own, rewritten in pairs:
        for side, text in (("own", own), ("rewritten", rewritten)):
            store, n_prompt = _residuals_after_question(model, tokenizer, question,
                                                        tokenizer(text, add_special_tokens=False)["input_ids"],
                                                        layers, chat)
            for ell in layers:
                sides[side][ell].append(store[ell][0, n_prompt:].float().mean(0).cpu())
    facts = _facts(model)
    return {ell: DiffMeanResult.from_activations(ell, torch.stack(sides["rewritten"][ell]),
                                                 torch.stack(sides["own"][ell]), instruction=instruction,
                                                 model=facts, read_out="answers")
            for ell in layers}


def next_token_vectors(model: nn.Module, tokenizer, questions: Sequence[str], answers: Sequence[str],
                       forbidden: Callable[[str], bool], layers: Sequence[int], *, chat: bool = True,
                       instruction: Optional[str] = None) -> dict[int, DiffMeanResult]:
    """Vectors read where the next token is ``forbidden`` (module doc): ``forbidden(piece)``
    says whether a token, decoded alone, breaks the instruction. Answers without a forbidden
    token, or with nothing else, are left out; when none is left there is nothing to read."""
    if len(questions) != len(answers) or not questions:
        raise ValueError(f"questions and answers must be non-empty and aligned, got {len(questions)} "
                         f"and {len(answers)}")
    layers = [int(layer) for layer in layers]
    if not layers:
        raise ValueError("layers must name at least one layer")
    sides: dict[str, dict[int, list[torch.Tensor]]] = {"allowed": {ell: [] for ell in layers},
                                                      "forbidden": {ell: [] for ell in layers}}
    for question, answer in zip(questions, answers):
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        next_forbidden = torch.tensor([bool(forbidden(tokenizer.decode([i]))) for i in answer_ids], dtype=torch.bool)
        if not next_forbidden.any() or next_forbidden.all():
            continue
        store, n_prompt = _residuals_after_question(model, tokenizer, question, answer_ids, layers, chat)
        start = n_prompt - 1  # the last prompt token predicts the answer's first token
        for ell in layers:
            predicting = store[ell][0, start:start + len(answer_ids)].float().cpu()
            sides["allowed"][ell].append(predicting[~next_forbidden].mean(0))
            sides["forbidden"][ell].append(predicting[next_forbidden].mean(0))
    if not sides["allowed"][layers[0]]:
        raise ValueError("no answer has both a forbidden next token and an allowed one: there is nothing to read")
    facts = _facts(model)
    return {ell: DiffMeanResult.from_activations(ell, torch.stack(sides["allowed"][ell]),
                                                 torch.stack(sides["forbidden"][ell]), instruction=instruction,
                                                 model=facts, read_out="next-token")
            for ell in layers}


# --------------------------------------------------------------------- layer search
@dataclass
class LayerScore:
    accuracy: float  # instruction-following accuracy (IFEval loose) on the validation prompts
    degenerate_rate: float  # fraction of outputs that are empty, repetitive or broken
    disqualified: bool = False
    coefficient: Optional[float] = None  # the coefficient scored (None: the mode's default)
    perplexity: Optional[float] = None   # mean response perplexity under the unsteered model, if scored


Scorer = Callable[[nn.Module, Any, Optional[SteeringSpec], Any], "LayerScore | Mapping[str, float]"]


def _as_score(value: Any) -> LayerScore:
    if isinstance(value, LayerScore):
        return value
    if isinstance(value, Mapping):
        return LayerScore(float(value["accuracy"]), float(value.get("degenerate_rate", 0.0)))
    if hasattr(value, "ifr_loose"):
        return LayerScore(float(value.ifr_loose), float(getattr(value, "degenerate_rate", 0.0)))
    accuracy, degenerate = value
    return LayerScore(float(accuracy), float(degenerate))


class EvaluationScorer:
    """A scorer over :mod:`pysteer.evaluation`: generate the validation ``EvalPrompt`` s
    (their ``base_prompt`` — without the instruction text — when ``use_base_prompt``),
    steered by the spec, and return (IFR loose, degenerate rate).

    :meth:`score_configs` scores every configuration row of a spec in one batched
    generation (row (c, p) steered by configuration c); :func:`layer_search` uses it to
    try several coefficients per layer at the cost of one generation.
    """

    def __init__(self, max_new_tokens: int = 64, batch_size: int = 8, chat: bool = True,
                 use_base_prompt: bool = True, perplexity: bool = False) -> None:
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.chat, self.use_base_prompt, self.perplexity = chat, use_base_prompt, perplexity

    def __call__(self, model: nn.Module, tokenizer, spec: Optional[SteeringSpec], validation: Any) -> LayerScore:
        if spec is None:
            return self._score(model, tokenizer, None, list(validation), 1)[0]
        if spec.n_configs != 1:
            raise ValueError(f"a scorer call takes a one-configuration spec (got {spec.n_configs}); "
                             f"use score_configs")
        return self.score_configs(model, tokenizer, spec, validation)[0]

    def score_configs(self, model: nn.Module, tokenizer, spec: SteeringSpec, validation: Any) -> list[LayerScore]:
        """One score per configuration row of ``spec``."""
        return self._score(model, tokenizer, spec, list(validation), spec.n_configs)

    def _score(self, model, tokenizer, spec, prompts: list, n_configs: int) -> list[LayerScore]:
        from .. import evaluation  # imported lazily: discovery works without it
        from ..patching import steer
        texts = [p.text(not self.use_base_prompt) for p in prompts]
        kwargs = dict(max_new_tokens=self.max_new_tokens, chat=self.chat, batch_size=self.batch_size)
        if spec is None:
            responses = evaluation.generate_responses(model, tokenizer, texts, **kwargs)
        else:
            with steer(model, spec) as steering:
                by_config, _ = evaluation.generate_for_configs(model, tokenizer, texts, steering=steering,
                                                               configs=range(n_configs), **kwargs)
            responses = [r for config in by_config for r in config]
        perplexities = [None] * len(responses)
        if self.perplexity:  # nothing is attached any more: this is the unsteered model
            perplexities = evaluation.response_perplexity(model, tokenizer, texts * n_configs, responses,
                                                          batch_size=self.batch_size * n_configs, chat=self.chat)
        scores = []
        for c in range(n_configs):
            rows = slice(c * len(texts), (c + 1) * len(texts))
            report = evaluation.score_responses(prompts, responses[rows], perplexities=perplexities[rows]
                                                if self.perplexity else None,
                                                instruction_in_prompt=not self.use_base_prompt)
            scores.append(LayerScore(float(report.ifr_loose), float(report.degenerate_rate),
                                     perplexity=report.mean_perplexity))
        return scores


def evaluation_scorer(max_new_tokens: int = 64, batch_size: int = 8, chat: bool = True,
                      use_base_prompt: bool = True, perplexity: bool = False) -> EvaluationScorer:
    """The default :class:`EvaluationScorer` (IFR loose, degenerate rate; with ``perplexity``
    also the responses' mean perplexity under the unsteered model)."""
    return EvaluationScorer(max_new_tokens, batch_size, chat, use_base_prompt, perplexity)


def default_candidate_layers(model: nn.Module) -> list[int]:
    """Stolfo et al.'s candidates: every layer from n_layers // 5 upward."""
    n = len(decoder_layers(model))
    return list(range(n // 5, n))


@dataclass
class LayerSearch:
    """Scores per candidate layer; ``best`` is the chosen layer's vector (None if all disqualified)."""

    best_layer: Optional[int]
    scores: dict[int, LayerScore]
    baseline: Optional[LayerScore]
    results: dict[int, DiffMeanResult]
    mode: str = "project"
    coefficient: Optional[float] = None
    grid: dict[int, list[LayerScore]] = field(default_factory=dict)  # every (layer, coefficient) scored

    @property
    def best(self) -> Optional[DiffMeanResult]:
        return None if self.best_layer is None else self.results[self.best_layer]

    def spec(self) -> SteeringSpec:
        if self.best is None:
            raise SteeringSpecError("every candidate layer was disqualified (degenerate outputs)")
        chosen = self.scores[self.best_layer].coefficient
        spec = self.best.spec(self.mode, self.coefficient if chosen is None else chosen)
        spec.metadata["layer_search"] = {str(k): dataclasses.asdict(v) for k, v in self.scores.items()}
        return spec


def layer_search(model: nn.Module, tokenizer, instruction: str, validation: Any,
                 scorer: Optional[Scorer] = None, *, candidate_layers: Optional[Sequence[int]] = None,
                 base_prompts: Optional[Sequence[str]] = None, n_prompts: Optional[int] = None,
                 mode: str = "project", coefficient: Optional[float] = None,
                 scales: Optional[Sequence[float]] = None, max_perplexity_ratio: Optional[float] = None,
                 max_degenerate: float = 0.2, score_baseline: bool = True, placement: str = "after",
                 chat: bool = True, batch_size: int = 8, progress: bool = True,
                 seed: int = 0) -> LayerSearch:
    """Pick the layer (and, with ``scales``, the coefficient) whose instruction vector steers best.

    One collection pass computes v_ℓ for every candidate ℓ (default: n_layers // 5 …
    n_layers − 1). At each layer the coefficients ``scale × base`` are tried, base being
    ``coefficient`` or the mode's default (‖v_ℓ‖ for add, z̄_ℓ for project; ``scales``
    default [1]), each scored by ``scorer(model, tokenizer, spec, validation)`` →
    (accuracy, degenerate rate) (default: :func:`evaluation_scorer`) — all of a layer's
    coefficients in one batched generation when the scorer has ``score_configs``. A
    coefficient whose degenerate rate exceeds ``max_degenerate`` is disqualified, and so
    is one whose responses' perplexity exceeds ``max_perplexity_ratio`` × the unsteered
    responses' (this needs a scorer reporting perplexity, e.g.
    ``evaluation_scorer(perplexity=True)``); a
    layer's score is its best qualified coefficient (ties → the first scale), and the
    best layer wins (ties → the earlier layer). ``grid`` keeps every score.
    """
    layers = list(candidate_layers) if candidate_layers is not None else default_candidate_layers(model)
    if not layers:
        raise ValueError("no candidate layers")
    scales = [1.0] if scales is None else [float(x) for x in scales]
    if not scales:
        raise ValueError("scales must hold at least one multiplier")
    if max_perplexity_ratio is not None and not score_baseline:
        raise ValueError("max_perplexity_ratio compares with the unsteered responses: keep score_baseline")
    scorer = scorer or evaluation_scorer(chat=chat, batch_size=batch_size,
                                         perplexity=max_perplexity_ratio is not None)
    results = instruction_vectors(model, tokenizer, instruction, layers, base_prompts,
                                  n_prompts=n_prompts, placement=placement, seed=seed, chat=chat,
                                  batch_size=batch_size, progress=progress)
    baseline = _as_score(scorer(model, tokenizer, None, validation)) if score_baseline else None
    max_perplexity = None
    if max_perplexity_ratio is not None:
        if baseline.perplexity is None:
            raise ValueError("max_perplexity_ratio needs a scorer that reports perplexity "
                             "(evaluation_scorer(perplexity=True))")
        max_perplexity = max_perplexity_ratio * baseline.perplexity
    scores: dict[int, LayerScore] = {}
    grid: dict[int, list[LayerScore]] = {}
    for layer in tqdm(layers, desc="layer search", disable=not progress, unit="layer"):
        result = results[layer]
        base = coefficient if coefficient is not None else (result.norm if mode == "add" else result.z_bar)
        coefficients = [scale * base for scale in scales]
        if len(coefficients) > 1 and hasattr(scorer, "score_configs"):
            iv = DenseIntervention(layer, result.direction.unsqueeze(0), [[c] for c in coefficients], mode)
            spec = SteeringSpec([iv], model=dict(result.model))
            tried = [_as_score(v) for v in scorer.score_configs(model, tokenizer, spec, validation)]
        else:
            tried = [_as_score(scorer(model, tokenizer, result.spec(mode, c), validation)) for c in coefficients]
        for score, c in zip(tried, coefficients):
            score.coefficient = c if (len(scales) > 1 or coefficient is not None) else None
            score.disqualified = score.degenerate_rate > max_degenerate or (
                max_perplexity is not None and (score.perplexity is None or score.perplexity > max_perplexity))
        grid[layer] = tried
        qualified = [s for s in tried if not s.disqualified]
        # The layer's score: its best qualified coefficient, else its best one (disqualified).
        scores[layer] = max(qualified or tried, key=lambda s: s.accuracy)
    eligible = [layer for layer in layers if not scores[layer].disqualified]
    best = max(eligible, key=lambda layer: (scores[layer].accuracy, -layers.index(layer)), default=None)
    return LayerSearch(best, scores, baseline, results, mode, coefficient, grid)


# ------------------------------------------------------------- compose and transfer
def compose(*specs: SteeringSpec) -> SteeringSpec:
    """One spec applying every intervention of ``specs`` (e.g. a format and a length vector).

    Interventions may sit on different layers or share one (they then apply in order).
    Every spec must have one configuration, or all the same number; positions must agree.
    """
    if len(specs) < 2:
        raise ValueError("compose needs at least two specs")
    positions = {s.positions for s in specs}
    if len(positions) != 1:
        raise SteeringSpecError(f"cannot compose specs steering different positions: {sorted(positions)}")
    widths = {s.d_model for s in specs}
    if len(widths) != 1:
        raise SteeringSpecError(f"cannot compose specs for different widths: {sorted(widths)}")
    configs = {s.n_configs for s in specs}
    if len(configs) != 1:
        raise SteeringSpecError(f"cannot compose specs with different numbers of configurations: "
                                f"{sorted(configs)}")
    interventions = [iv for s in specs for iv in s.interventions]
    model = dict(specs[0].model)
    metadata = {"method": "compose", "parts": [dict(s.metadata) for s in specs]}
    return SteeringSpec(interventions, positions.pop(), model, metadata)


def transfer(spec: SteeringSpec, target: "nn.Module | Mapping[str, Any]",
             layer_map: "str | Mapping[int, int] | None" = None) -> SteeringSpec:
    """A copy of ``spec`` for another model of the same width (e.g. instruct → base).

    ``target`` is the model (or its facts: hidden_size, num_hidden_layers, name). Layers
    stay the same (``layer_map=None``), follow a dict, or with ``"relative"`` keep their
    relative depth (ℓ' = round(ℓ·(n'−1)/(n−1))). The spec's ``model`` becomes the target's;
    where it came from is kept in ``metadata["transferred_from"]``.
    """
    facts = _facts(target) if isinstance(target, nn.Module) else dict(target)
    width, n_target = facts.get("hidden_size"), facts.get("num_hidden_layers")
    if width != spec.d_model:
        raise SteeringSpecError(f"cannot transfer a spec of width {spec.d_model} (made for "
                                f"{spec.model.get('name') or 'another model'}) to a model of "
                                f"hidden_size {width}")
    n_source = spec.model.get("num_hidden_layers")
    if layer_map == "relative":
        if not n_source or not n_target:
            raise SteeringSpecError("layer_map='relative' needs num_hidden_layers of both models")
        mapping = {l: round(l * (n_target - 1) / max(1, n_source - 1)) for l in spec.layers}
    elif layer_map is None:
        mapping = {l: l for l in spec.layers}
    elif isinstance(layer_map, Mapping):
        mapping = {l: int(layer_map.get(l, l)) for l in spec.layers}
    else:
        raise ValueError(f"layer_map must be None, 'relative' or a dict, got {layer_map!r}")
    for source, dest in mapping.items():
        if n_target is not None and not 0 <= dest < n_target:
            raise SteeringSpecError(f"layer {source} maps to {dest}, outside the target's "
                                    f"{n_target} layers; pass layer_map=")
    interventions = [dataclasses.replace(iv, layer=mapping[iv.layer]) for iv in spec.interventions]
    metadata = dict(spec.metadata, transferred_from=dict(spec.model), layer_map=
                    {str(k): v for k, v in mapping.items()})
    return SteeringSpec(interventions, spec.positions, facts, metadata)
