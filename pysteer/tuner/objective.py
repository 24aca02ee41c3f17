"""The steering objective: coefficients → steered responses on a prompt minibatch → reward.

For q candidates x_1..x_q [q, d] and a minibatch of P prompts:

    spec_q   = template with configuration rows x_1..x_q       (SearchSpace.spec_for)
    responses = greedy generation of the q·P rows (prompt p, candidate i)
    reward_i = w_ifr·IFR_loose_i + w_rr·RR_i + w_oq·OQ_i         (pysteer.evaluation.reward)

with OQ's perplexity — of the generated tokens, under the *unsteered* model — computed
alongside the generation (:func:`pysteer.evaluation.generate_with_perplexity`).

Quality references (``quality_reference=True``): the unsteered model's own greedy response
ref_p to each prompt p (same text sent, same max_new_tokens), generated once per prompt
per objective and cached, and two ratios per candidate i, each the median over its P
prompts (:func:`pysteer.evaluation.metrics.perplexity_ratio`):

    ppl_ratio_i            = median_p ppl(r_ip | sent_p) / ppl(ref_p | sent_p)
    ppl_ratio_instructed_i = median_p ppl(r_ip | instr_p) / ppl(ref_p | instr_p)

all perplexities of generated token ids under the unsteered model; sent_p is the text the
candidates answered, instr_p the prompt with its instruction (:attr:`EvalPrompt.prompt`).
With the instruction in the sent prompt the two coincide. Cost: in the batched objective
the references ride in the round's one generation as P extra unsteered rows (q·P + P
instead of q·P) while the minibatch holds a prompt not yet referenced — the first epoch
— and nothing afterwards; the instructed ratio of an instruction-free run adds one
scoring pass (no generation) over the round's new (prompt, response) pairs. Measured on
the default model (CPU, 2 threads, q=4, P=8, 24 tokens; ±0.5 s noise): a round that
generates references 6.7 s against 5.3-6.1 s without; later rounds no slower; without
the instruction +2.0-2.5 s a round (≈40%, the instructed scoring: ``reference_score_s``).

:class:`BatchedObjective` attaches the template once per run, writes each round's q
candidates into its coefficient tables, and runs ONE generation whose batch carries all
q·P rows, row (i, p) steered by configuration i — the per-row coefficient tables of the
fused op make that free. :class:`SequentialObjective` is
the papers' loop: one spec, one attach and one generation per candidate. With greedy
decoding both give the same responses and rewards; the batched one is faster.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence, Union

import torch

from ..patching import steer
from ..spec import SteeringSpec
from .bounds import SearchSpace, TunerError, search_space


class _SteeringObjective:
    """Shared set-up: the search space, the prompt minibatches and the scoring."""

    def __init__(self, model, tokenizer, template: Union[SteeringSpec, SearchSpace],
                 prompts: Sequence[Any], *, weights: Optional[dict] = None, max_new_tokens: int = 32,
                 minibatch: Optional[int] = None, seed: int = 0, instruction_in_prompt: bool = True,
                 chat: bool = True, batch_size: Optional[int] = None, keep_responses: bool = True,
                 quality_reference: bool = True) -> None:
        from ..evaluation import reward
        from ..evaluation.metrics import DEFAULT_WEIGHTS

        self.model, self.tokenizer = model, tokenizer
        self.space = template if isinstance(template, SearchSpace) else search_space(template)
        self.prompts = list(prompts)
        if not self.prompts:
            raise TunerError("the objective needs at least one prompt")
        if max_new_tokens < 1:
            raise TunerError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if minibatch is not None and minibatch < 1:
            raise TunerError(f"minibatch must be at least 1, got {minibatch}")
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        reward_check = set(self.weights) - set(DEFAULT_WEIGHTS)
        if reward_check:
            raise TunerError(f"reward weights {sorted(reward_check)} are unknown; use {sorted(DEFAULT_WEIGHTS)}")
        self._reward = reward
        self.max_new_tokens, self.chat, self.batch_size = int(max_new_tokens), chat, batch_size
        self.minibatch = len(self.prompts) if minibatch is None else min(int(minibatch), len(self.prompts))
        self.seed, self.instruction_in_prompt, self.keep_responses = int(seed), instruction_in_prompt, keep_responses
        self.round = 0
        self.quality_reference = bool(quality_reference)
        # (prompt key, text sent) → the unsteered model's greedy response ids to it: the
        # minibatches repeat prompts across rounds and the reference never changes.
        self.references: dict[tuple[str, str], tuple[int, ...]] = {}
        self.reference_rows = 0  # reference responses generated so far (once per distinct prompt)
        # (prompt text, response ids) → perplexity under the unsteered model given that prompt.
        # Scored once per objective: a candidate that answers as the reference gets the
        # reference's own number, so its ratio is exactly 1.
        self._pair_perplexity: dict[tuple[str, tuple[int, ...]], float] = {}
        # Seconds spent so far in each part of the evaluations (prompt_pass_s, generate_s,
        # score_s; see generate_with_perplexity; reference_score_s: the instructed ratio's
        # extra scoring): where tuning time goes.
        self.phase_seconds: dict[str, float] = {}

    # ------------------------------------------------------------------ minibatches
    def set_round(self, round_index: int) -> None:
        """Use round ``round_index``'s minibatch for the next :meth:`evaluate` calls."""
        self.round = int(round_index)

    def current_prompts(self) -> list[Any]:
        """Round r's minibatch: chunk r mod n of a seeded permutation, reshuffled every epoch
        (n = number of chunks), so every prompt is used once per epoch — reproducibly."""
        n_prompts, size = len(self.prompts), self.minibatch
        if size >= n_prompts:
            return list(self.prompts)
        chunks = n_prompts // size
        epoch, chunk = divmod(self.round, chunks)
        gen = torch.Generator().manual_seed(self.seed * 7_919 + epoch)
        order = torch.randperm(n_prompts, generator=gen)[chunk * size:(chunk + 1) * size]
        return [self.prompts[i] for i in order.tolist()]

    # ------------------------------------------------------------------ scoring
    def _score(self, prompts: list[Any], responses: list[str], steering,
               perplexities: Optional[list[float]] = None,
               ratios: Optional[tuple[Optional[float], Optional[float]]] = None) -> dict[str, Any]:
        from ..evaluation import score_responses

        report = score_responses(prompts, responses, model=self.model, tokenizer=self.tokenizer,
                                 steering=steering, instruction_in_prompt=self.instruction_in_prompt,
                                 perplexities=perplexities)
        result = {"reward": float(self._reward(report, self.weights)), "ifr_strict": report.ifr_strict,
                  "ifr_loose": report.ifr_loose, "rr": report.rr, "oq": report.oq,
                  "degenerate_rate": report.degenerate_rate, "mean_perplexity": report.mean_perplexity,
                  "per_type": report.per_type, "prompt_keys": [str(p.key) for p in prompts],
                  # per prompt, in prompt_keys' order: what a paired comparison of two points reads
                  "followed_loose": [bool(s.followed_loose) for s in report.scores]}
        if ratios is not None:
            result["ppl_ratio"], result["ppl_ratio_instructed"] = ratios
        if self.keep_responses:
            result["responses"] = list(responses)
        return result

    def _texts(self, prompts: list[Any]) -> list[str]:
        return [p.text(self.instruction_in_prompt) for p in prompts]

    # ------------------------------------------------------------------ quality references
    def _reference_key(self, prompt: Any) -> tuple[str, str]:
        return str(prompt.key), prompt.text(self.instruction_in_prompt)

    def _needs_reference(self, prompts: list[Any]) -> bool:
        return self.quality_reference and any(self._reference_key(p) not in self.references for p in prompts)

    def _store_reference(self, prompts: list[Any], ids: list[tuple[int, ...]],
                         perplexities: list[float]) -> None:
        """Keep the unsteered responses ``ids[p]`` (and their perplexities given the sent
        prompt) of the prompts not referenced yet."""
        for prompt, response, ppl in zip(prompts, ids, perplexities):
            key = self._reference_key(prompt)
            if key not in self.references:
                self.references[key] = tuple(response)
                self._pair_perplexity.setdefault((key[1], tuple(response)), float(ppl))
                self.reference_rows += 1

    def _generate_reference(self, prompts: list[Any], steering) -> None:
        """The unsteered responses (configuration −1 of the attached ``steering``) to the
        prompts not referenced yet, in one generation."""
        from ..evaluation import generate_for_configs

        missing = [p for p in prompts if self._reference_key(p) not in self.references]
        if not missing:
            return
        _, perplexities, ids = generate_for_configs(
            self.model, self.tokenizer, self._texts(missing), steering=steering, configs=[-1], score=True,
            chat=self.chat, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
            timings=self.phase_seconds, return_ids=True)
        self._store_reference(missing, ids[0], perplexities[0])

    def _ratios(self, prompts: list[Any], ids: list[list[tuple[int, ...]]], perplexities: list[list[float]],
                steering) -> list[tuple[Optional[float], Optional[float]]]:
        """(ppl_ratio, ppl_ratio_instructed) per candidate from its response ids[i][p] and
        their perplexities given the sent prompt (from the generation); see the module docstring."""
        from ..evaluation.metrics import perplexity_ratio

        sent = self._texts(prompts)
        refs = [self.references[self._reference_key(p)] for p in prompts]
        for row_ids, row_ppl in zip(ids, perplexities):
            for text, response, ppl in zip(sent, row_ids, row_ppl):
                self._pair_perplexity.setdefault((text, tuple(response)), float(ppl))
        instructed = [p.prompt for p in prompts]
        if instructed != sent:
            self._score_pairs([(t, r) for row in ids for t, r in zip(instructed, row)]
                              + list(zip(instructed, refs)), steering)
        out = []
        for row in ids:
            pairs = []
            for texts in (sent, instructed):
                steered = [self._pair_perplexity[(t, tuple(r))] for t, r in zip(texts, row)]
                reference = [self._pair_perplexity[(t, r)] for t, r in zip(texts, refs)]
                pairs.append(perplexity_ratio(steered, reference))
            out.append((pairs[0], pairs[1]))
        return out

    def reference_result(self) -> dict[str, Any]:
        """The unsteered model's outcomes on the current minibatch, scored as a candidate's
        (its ratios are 1 by construction). Needs the minibatch's references: evaluate first."""
        prompts = self.current_prompts()
        missing = [str(p.key) for p in prompts if self._reference_key(p) not in self.references]
        if missing:
            raise TunerError(f"no reference response yet for prompt(s) {missing}: evaluate a candidate first "
                             f"(quality_reference=True)")
        ids = [self.references[self._reference_key(p)] for p in prompts]
        responses = self.tokenizer.batch_decode([list(r) for r in ids], skip_special_tokens=True)
        perplexities = [self._pair_perplexity[(t, r)] for t, r in zip(self._texts(prompts), ids)]
        return self._score(prompts, responses, None, perplexities, (1.0, 1.0))

    def _score_pairs(self, pairs: list[tuple[str, tuple[int, ...]]], steering) -> None:
        """Perplexity of each (prompt text, response ids) pair not scored yet, under the
        unsteered model, in one :func:`~pysteer.evaluation.metrics.token_perplexity` call."""
        from ..evaluation.metrics import prompt_token_ids, token_perplexity

        todo = list(dict.fromkeys((t, tuple(r)) for t, r in pairs if (t, tuple(r)) not in self._pair_perplexity))
        if not todo:
            return
        started = time.perf_counter()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        prompt_ids = {t: prompt_token_ids(self.tokenizer, t, self.chat) for t in dict.fromkeys(t for t, _ in todo)}
        values = token_perplexity(self.model, [prompt_ids[t] for t, _ in todo], [r for _, r in todo],
                                  steering=steering, pad_token_id=pad,
                                  batch_size=len(todo) if self.batch_size is None else self.batch_size)
        self._pair_perplexity.update(zip(todo, values))
        self.phase_seconds["reference_score_s"] = (self.phase_seconds.get("reference_score_s", 0.0)
                                                   + time.perf_counter() - started)

    def _candidates(self, candidates: torch.Tensor) -> torch.Tensor:
        X = torch.as_tensor(candidates, dtype=torch.float64)
        if X.ndim == 1:
            X = X.unsqueeze(0)
        if X.ndim != 2 or X.shape[1] != self.space.d or X.shape[0] < 1:
            raise TunerError(f"candidates must be [q, {self.space.d}], got {tuple(X.shape)}")
        if not torch.isfinite(X).all():
            raise TunerError("candidates contain NaN or infinite values")
        return X

    def __call__(self, candidates: torch.Tensor) -> list[dict[str, Any]]:
        return self.evaluate(candidates)

    def describe(self) -> dict[str, Any]:
        """What the history records about the objective."""
        return {"objective": type(self).__name__, "weights": self.weights,
                "max_new_tokens": self.max_new_tokens, "minibatch": self.minibatch,
                "n_prompts": len(self.prompts), "instruction_in_prompt": self.instruction_in_prompt,
                "objective_seed": self.seed, "quality_reference": self.quality_reference}


class BatchedObjective(_SteeringObjective):
    """All q candidates × P prompts in one generation.

    Between :meth:`open` and :meth:`close` (``tune`` opens it for the whole run; ``with
    objective:`` does too) the steering is attached once: the first evaluation attaches the
    template with its candidates as configuration rows, later ones write their candidates
    into the same coefficient buffers (:meth:`pysteer.Steering.set_coefficients`), so no
    weight is copied again. Outside, each evaluation attaches and detaches, leaving the
    model as it found it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._steering = None
        self._open = False

    @torch.no_grad()
    def evaluate(self, candidates: torch.Tensor) -> list[dict[str, Any]]:
        """``candidates`` [q, d] → q result dicts (reward, IFR, RR, OQ, ..., responses)."""
        from ..evaluation import generate_for_configs

        X = self._candidates(candidates)
        q = X.shape[0]
        prompts = self.current_prompts()
        steering = self._steering_for(X)
        try:
            # One generation for all q × P rows, row (i, p) steered by configuration i; the
            # perplexities (under the unsteered model) come with it, sharing its prompt work.
            # While a prompt lacks its reference, P unsteered rows (configuration −1) ride along.
            reference = self._needs_reference(prompts)
            responses, perplexities, ids = generate_for_configs(
                self.model, self.tokenizer, self._texts(prompts), steering=steering,
                configs=list(range(q)) + [-1] * reference, score=True, chat=self.chat,
                max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, timings=self.phase_seconds,
                return_ids=True)
            if reference:
                self._store_reference(prompts, ids[q], perplexities[q])
            ratios = (self._ratios(prompts, ids[:q], perplexities[:q], steering) if self.quality_reference
                      else [None] * q)
            return [self._score(prompts, responses[i], steering, perplexities[i], ratios[i]) for i in range(q)]
        finally:
            if not self._open:
                self._detach()

    def _steering_for(self, X: torch.Tensor):
        tables = self.space.tables(X)
        if self._steering is None or not self._steering.attached:
            self._steering = steer(self.model, self.space.template.with_coefficients(tables))
        else:
            self._steering.set_rows(None)  # the last round's rows may name more candidates
            self._steering.set_coefficients(tables)
        return self._steering

    def _detach(self) -> None:
        if self._steering is not None:
            self._steering.detach()
            self._steering = None

    def open(self) -> "BatchedObjective":
        """Keep the steering attached across evaluations until :meth:`close`."""
        self._open = True
        return self

    def close(self) -> None:
        """Detach the steering the evaluations shared (idempotent)."""
        self._open = False
        self._detach()

    def __enter__(self) -> "BatchedObjective":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()


class SequentialObjective(_SteeringObjective):
    """One candidate per attach and per generation (the papers' loop): the baseline."""

    @torch.no_grad()
    def evaluate(self, candidates: torch.Tensor) -> list[dict[str, Any]]:
        from ..evaluation import generate_with_perplexity

        X = self._candidates(candidates)
        prompts = self.current_prompts()
        results = []
        for i in range(X.shape[0]):
            with steer(self.model, self.space.spec_for(X[i:i + 1])) as steering:
                if self.quality_reference:
                    self._generate_reference(prompts, steering)
                responses, perplexities, ids = generate_with_perplexity(
                    self.model, self.tokenizer, self._texts(prompts), steering=steering, rows=0,
                    chat=self.chat, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                    timings=self.phase_seconds, return_ids=True)
                ratios = (self._ratios(prompts, [ids], [perplexities], steering)[0] if self.quality_reference
                          else None)
                results.append(self._score(prompts, responses, steering, perplexities, ratios))
        return results


def make_objective(mode: str, *args: Any, **kwargs: Any) -> _SteeringObjective:
    """``mode`` "batched" or "sequential" → the objective class with these arguments."""
    classes = {"batched": BatchedObjective, "sequential": SequentialObjective}
    if mode not in classes:
        raise TunerError(f"mode must be batched or sequential, got {mode!r}")
    return classes[mode](*args, **kwargs)
