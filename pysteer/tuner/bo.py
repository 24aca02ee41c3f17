"""Bayesian optimisation of steering coefficients: the loop, resumable and reproducible.

Round 0 evaluates an initial design (scrambled Sobol points in the box, optionally
led by given points such as the template's own coefficients). Every later round fits
a GP to all (x, reward) pairs so far and proposes q new candidates at once:

    u = (x − lower) / (upper − lower)            inputs normalised to [0, 1]^d
    y = (reward − mean) / std                    outcomes standardised (Standardize)
    GP = SingleTaskGP(u, y)                      fitted by exact marginal likelihood
    U* = argmax_{U ∈ [0,1]^{q×d}} qLogNEI(U)     optimize_acqf, multi-start L-BFGS-B

qLogNoisyExpectedImprovement suits the objective: rewards are measured on prompt
minibatches, so they are noisy, and q candidates are chosen jointly.

Reproducible: round r's randomness (Sobol scrambling, QMC base samples, the
acquisition optimiser's starting points) is seeded by (seed, r) alone and its GP is
fitted to the history as stored in JSON, so an interrupted run that is resumed
proposes exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from .bounds import Box, SearchSpace, TunerError
from .history import History, Record, json_safe, plot_history

HISTORY_FILE, BEST_SPEC_DIR, PLOT_FILE = "history.json", "best_spec", "reward.png"

Objective = Callable[[torch.Tensor], Sequence[dict]]


@dataclass
class AcquisitionOptions:
    """How hard ``optimize_acqf`` works per round (defaults fit d ≈ 30, q ≈ 8 on a CPU)."""

    num_restarts: int = 8
    raw_samples: int = 256
    mc_samples: int = 128  # QMC samples of the joint posterior in qLogNEI
    maxiter: int = 100  # L-BFGS-B iterations per restart

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class TuneResult:
    history: History
    best: Record
    out_dir: Path

    @property
    def history_path(self) -> Path:
        return self.out_dir / HISTORY_FILE

    @property
    def best_spec_path(self) -> Path:
        return self.out_dir / BEST_SPEC_DIR

    @property
    def plot_path(self) -> Path:
        return self.out_dir / PLOT_FILE


def round_seed(seed: int, round_index: int) -> int:
    """The seed of one round: a function of (seed, round) only, so resuming changes nothing."""
    return (int(seed) * 1_000_003 + int(round_index) * 7_919 + 17) % (2**31 - 1)


def initial_design(box: Box, n: int, seed: int, initial: Optional[torch.Tensor] = None
                   ) -> tuple[torch.Tensor, list[str]]:
    """``n`` points [n, d]: the ``initial`` points (clipped into the box) first, then Sobol."""
    given = torch.empty(0, box.d, dtype=torch.float64)
    if initial is not None:
        given = box.clip(torch.as_tensor(initial, dtype=torch.float64).reshape(-1, box.d))[:n]
    engine = torch.quasirandom.SobolEngine(box.d, scramble=True, seed=round_seed(seed, 0))
    sobol = box.unnormalize(engine.draw(n - given.shape[0], dtype=torch.float64))
    return torch.cat([given, sobol]), ["template"] * given.shape[0] + ["sobol"] * sobol.shape[0]


def propose(history: History, q: int, round_index: int,
            options: Optional[AcquisitionOptions] = None) -> torch.Tensor:
    """q candidates [q, d] (box units) from a GP fitted to ``history`` and qLogNEI."""
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from botorch.optim import optimize_acqf
    from botorch.sampling.normal import SobolQMCNormalSampler
    from gpytorch.mlls import ExactMarginalLogLikelihood

    options = options or AcquisitionOptions()
    box = history.box
    if not history.records:
        raise TunerError("propose needs at least one evaluated candidate")
    X = box.normalize(torch.tensor([r.candidate for r in history.records], dtype=torch.float64))
    Y = torch.tensor([[r.reward] for r in history.records], dtype=torch.float64)
    seed = round_seed(history.seed, round_index)
    unit = torch.stack([torch.zeros(box.d), torch.ones(box.d)]).to(torch.float64)
    threads = torch.get_num_threads()
    # The GP's matrices are at most a few hundred wide: thread hand-offs cost more than they
    # save, and on a shared CPU multi-threaded BLAS at this size slows down many-fold.
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(), warnings.catch_warnings():
            torch.manual_seed(seed)
            # Constant or few rewards make BoTorch warn about data and fitting; the GP is still usable.
            warnings.filterwarnings("ignore", module=r"botorch|gpytorch|linear_operator")
            gp = SingleTaskGP(X, Y, outcome_transform=Standardize(m=1))
            fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
            sampler = SobolQMCNormalSampler(sample_shape=torch.Size([options.mc_samples]), seed=seed)
            acq = qLogNoisyExpectedImprovement(gp, X_baseline=X, sampler=sampler, prune_baseline=True)
            U, _ = optimize_acqf(acq, bounds=unit, q=q, num_restarts=options.num_restarts,
                                 raw_samples=options.raw_samples,
                                 options={"seed": seed, "maxiter": options.maxiter,
                                          "batch_limit": options.num_restarts})
    finally:
        torch.set_num_threads(threads)
    return box.unnormalize(U.detach().clamp(0.0, 1.0))


def _prepare_out_dir(out: Path, resume: bool, overwrite: bool) -> Optional[History]:
    """The saved history to continue from, or None for a fresh start (after checking ``out``)."""
    path = out / HISTORY_FILE
    if path.exists():
        if resume:
            return History.load(path)
        if not overwrite:
            raise FileExistsError(f"{path} exists: resume it (resume=True / drop --no-resume) or pass "
                                  f"overwrite=True (--overwrite) to start over")
        for name in (HISTORY_FILE, PLOT_FILE):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / BEST_SPEC_DIR, ignore_errors=True)
        return None
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and holds no {HISTORY_FILE}: choose a new output "
                              f"directory or pass overwrite=True (--overwrite)")
    return None


def _check_compatible(history: History, box: Box, seed: int, q: int, n_init: int, path: Path) -> None:
    for name, saved, now in (("seed", history.seed, seed), ("q", history.q, q),
                             ("n_init", history.n_init, n_init)):
        if saved != now:
            raise TunerError(f"{path}: the saved run used {name}={saved}, this call {name}={now}; "
                             f"use the same settings to resume, or a new output directory")
    if not history.box.same_as(box):
        raise TunerError(f"{path}: the saved run searched a different box (other features or bounds); "
                         f"use a new output directory")


def _check_results(results: Any, q: int, round_index: int) -> list[dict]:
    if not isinstance(results, (list, tuple)) or len(results) != q:
        raise TunerError(f"round {round_index}: the objective must return a list of {q} dicts "
                         f"(one per candidate), got {type(results).__name__}"
                         + (f" of length {len(results)}" if hasattr(results, "__len__") else ""))
    for i, res in enumerate(results):
        if not isinstance(res, dict) or "reward" not in res:
            raise TunerError(f"round {round_index}: result {i} must be a dict with a 'reward'")
        value = float(res["reward"])
        if value != value or value in (float("inf"), float("-inf")):
            raise TunerError(f"round {round_index}: candidate {i} has a non-finite reward {value}")
    return list(results)


def _write_outputs(history: History, box: Box, out: Path, plot: bool) -> None:
    history.save(out / HISTORY_FILE)
    best = history.best()
    if best is None:
        return
    if isinstance(box, SearchSpace):
        spec = box.spec_for(torch.tensor([best.candidate], dtype=torch.float64))
        spec.metadata = {**spec.metadata, "tuner": {
            "reward": best.reward, "round": best.round, "index": best.index, "seed": history.seed,
            "metrics": best.metrics, "coordinates": box.names, "history": HISTORY_FILE}}
        spec.save(out / BEST_SPEC_DIR, overwrite=True)  # ours: the directory holds our history
    if plot:
        plot_history(history, out / PLOT_FILE)


def tune(evaluate: Objective, box: Box, out_dir: Union[str, Path], *, rounds: int, q: int,
         seed: int = 0, n_init: Optional[int] = None, initial: Optional[torch.Tensor] = None,
         resume: bool = True, overwrite: bool = False, progress: bool = True,
         options: Optional[AcquisitionOptions] = None,
         settings: Optional[dict[str, Any]] = None) -> TuneResult:
    """Maximise ``evaluate`` over ``box`` for ``rounds`` rounds; returns the history and best.

    ``evaluate(X)`` takes candidates X [k, d] (float64, box units) and returns k dicts
    with a ``"reward"`` (higher is better) and any metrics. If it has a
    ``set_round(r)`` method, that is called before round r's evaluation (objectives
    use it to pick round r's prompt minibatch reproducibly).

    Round 0 evaluates ``n_init`` points (default q): ``initial`` [k, d] first, then
    Sobol points; rounds 1..rounds-1 evaluate q candidates proposed by qLogNEI. After
    every round ``out_dir`` gets ``history.json`` (atomic), ``reward.png`` and, when
    ``box`` is a :class:`SearchSpace`, ``best_spec/`` — the template spec with the
    best candidate as its single configuration row. If ``out_dir`` already holds a
    history with the same seed, q, n_init and box, the run continues from it
    (``rounds`` may then be raised to extend a finished run).
    """
    if rounds < 1 or q < 1:
        raise TunerError(f"rounds and q must be at least 1 (got rounds={rounds}, q={q})")
    n_init = q if n_init is None else int(n_init)
    if n_init < 1:
        raise TunerError(f"n_init must be at least 1, got {n_init}")
    options = options or AcquisitionOptions()
    out = Path(out_dir)
    history = _prepare_out_dir(out, resume, overwrite)
    if history is None:
        history = History(int(seed), int(q), n_init, Box(box.lower, box.upper, box.names, box.sources),
                          settings={"acquisition": options.to_dict(), **json_safe(settings or {})})
        out.mkdir(parents=True, exist_ok=True)
        history.save(out / HISTORY_FILE)  # claims the directory before the first evaluation
    else:
        _check_compatible(history, box, int(seed), int(q), n_init, out / HISTORY_FILE)
    history.settings["rounds"] = rounds

    if callable(getattr(evaluate, "open", None)):
        evaluate.open()  # e.g. a BatchedObjective: one attached steering for the whole run
    bar = tqdm(total=rounds, initial=min(history.rounds_done, rounds), desc="tune", unit="round",
               disable=not progress, dynamic_ncols=True)
    try:
        for r in range(history.rounds_done, rounds):
            if r == 0:
                X, proposers = initial_design(box, n_init, history.seed, initial)
            else:
                X, proposers = propose(history, q, r, options), ["qLogNEI"] * q
            if hasattr(evaluate, "set_round"):
                evaluate.set_round(r)
            start = time.perf_counter()
            results = _check_results(evaluate(X.clone()), X.shape[0], r)
            seconds = time.perf_counter() - start
            for i, (x, res, proposer) in enumerate(zip(X, results, proposers)):
                metrics = json_safe({k: v for k, v in res.items() if k != "reward"})
                history.records.append(Record(r, i, proposer, x.tolist(), float(res["reward"]),
                                              metrics, round(seconds, 4)))
            _write_outputs(history, box, out, plot=False)  # plotting every round costs ~0.5 s
            bar.update(1)
            bar.set_postfix(best=f"{history.best().reward:.4g}")
    except BaseException:
        if history.records:  # leave a plot of what was done; the history is already saved
            plot_history(history, out / PLOT_FILE)
        raise
    finally:
        bar.close()
        if callable(getattr(evaluate, "close", None)):
            evaluate.close()
    if not history.records:
        raise TunerError("no candidate was evaluated")
    _write_outputs(history, box, out, plot=True)  # also refreshes a resumed, already finished run
    return TuneResult(history, history.best(), out)
