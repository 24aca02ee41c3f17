"""The steering objective: coefficients → steered responses on a prompt minibatch → reward.

For q candidates x_1..x_q [q, d] and a minibatch of P prompts:

    spec_q   = template with configuration rows x_1..x_q       (SearchSpace.spec_for)
    responses = greedy generation of the q·P rows (prompt p, candidate i)
    reward_i = w_ifr·IFR_loose_i + w_rr·RR_i + w_oq·OQ_i         (pysteer.evaluation.reward)

with OQ's perplexity — of the generated tokens, under the *unsteered* model — computed
alongside the generation (:func:`pysteer.evaluation.generate_with_perplexity`).

:class:`BatchedObjective` attaches the template once per run, writes each round's q
candidates into its coefficient tables, and runs ONE generation whose batch carries all
q·P rows, row (i, p) steered by configuration i — the per-row coefficient tables of the
fused op make that free. :class:`SequentialObjective` is
the papers' loop: one spec, one attach and one generation per candidate. With greedy
decoding both give the same responses and rewards; the batched one is faster.
"""

from __future__ import annotations

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
                 chat: bool = True, batch_size: Optional[int] = None, keep_responses: bool = True) -> None:
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
        # Seconds spent so far in each part of the evaluations (prompt_pass_s, generate_s,
        # score_s; see generate_with_perplexity): where tuning time goes.
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
               perplexities: Optional[list[float]] = None) -> dict[str, Any]:
        from ..evaluation import score_responses

        report = score_responses(prompts, responses, model=self.model, tokenizer=self.tokenizer,
                                 steering=steering, instruction_in_prompt=self.instruction_in_prompt,
                                 perplexities=perplexities)
        result = {"reward": float(self._reward(report, self.weights)), "ifr_strict": report.ifr_strict,
                  "ifr_loose": report.ifr_loose, "rr": report.rr, "oq": report.oq,
                  "degenerate_rate": report.degenerate_rate, "mean_perplexity": report.mean_perplexity,
                  "per_type": report.per_type, "prompt_keys": [str(p.key) for p in prompts]}
        if self.keep_responses:
            result["responses"] = list(responses)
        return result

    def _texts(self, prompts: list[Any]) -> list[str]:
        return [p.text(self.instruction_in_prompt) for p in prompts]

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
                "objective_seed": self.seed}


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
        prompts = self.current_prompts()
        steering = self._steering_for(X)
        try:
            # One generation for all q × P rows, row (i, p) steered by configuration i; the
            # perplexities (under the unsteered model) come with it, sharing its prompt work.
            responses, perplexities = generate_for_configs(
                self.model, self.tokenizer, self._texts(prompts), steering=steering, configs=range(X.shape[0]),
                score=True, chat=self.chat, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                timings=self.phase_seconds)
            return [self._score(prompts, responses[i], steering, perplexities[i]) for i in range(X.shape[0])]
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
                responses, perplexities = generate_with_perplexity(
                    self.model, self.tokenizer, self._texts(prompts), steering=steering, rows=0,
                    chat=self.chat, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                    timings=self.phase_seconds)
                results.append(self._score(prompts, responses, steering, perplexities))
        return results


def make_objective(mode: str, *args: Any, **kwargs: Any) -> _SteeringObjective:
    """``mode`` "batched" or "sequential" → the objective class with these arguments."""
    classes = {"batched": BatchedObjective, "sequential": SequentialObjective}
    if mode not in classes:
        raise TunerError(f"mode must be batched or sequential, got {mode!r}")
    return classes[mode](*args, **kwargs)
