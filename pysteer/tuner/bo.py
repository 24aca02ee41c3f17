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

With a :class:`~pysteer.tuner.outcomes.Goal` (``objective=``, ``constraints=``) the GP
models every named outcome y_1..y_m separately (one multi-output SingleTaskGP, an
independent GP with its own hyperparameters per outcome, each standardised):

    one objective     U* = argmax qLogNEI(U)   objective y_1, constraints c_k(y) ≤ 0 on the
                                               joint posterior samples (BoTorch ``constraints=``)
    several           U* = argmax qLogNEHVI(U) over the signed objectives, same constraints,
                                               reference point r (see Goal), q chosen greedily

and the result is the best *feasible* record (and, with several objectives, the
feasible Pareto set), see :mod:`pysteer.tuner.outcomes`.

Surrogates (``tune(..., surrogate=)``, ``pysteer tune --gp``):

    "gp"       SingleTaskGP, hyperparameters by maximum marginal likelihood (the default)
    "saasbo"   SaasFullyBayesianSingleTaskGP (Eriksson & Jankowiak 2021): a half-Cauchy
               prior shrinks every inverse lengthscale towards 0, so only the coordinates
               the data single out matter; its hyperparameters are sampled by NUTS
               (``fit_fully_bayesian_model_nuts``; sizes in :class:`AcquisitionOptions`)
               and the acquisition averages over the retained samples. Several outcomes
               (a Goal with bounds or objectives): one SAAS GP per outcome in a ModelListGP,
               each fitted by its own NUTS chain. For many coordinates (d ≈ 30) of which few
               matter; each round costs seconds of NUTS (JAX compiles the chain anew for
               every data size) instead of a fraction of a second.

Reproducible: round r's randomness (Sobol scrambling, QMC base samples, the
acquisition optimiser's starting points, the NUTS chains) is seeded by (seed, r) alone
and its GP is fitted to the history as stored in JSON, so an interrupted run that is
resumed proposes exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import inspect
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from .bounds import Box, SearchSpace, TunerError
from .history import History, Record, json_safe, plot_history
from .outcomes import ConstraintsArg, Goal

HISTORY_FILE, BEST_SPEC_DIR, PLOT_FILE = "history.json", "best_spec", "reward.png"
PARETO_FILE, PARETO_DIR = "pareto.json", "pareto"

Objective = Callable[[torch.Tensor], Sequence[dict]]
SURROGATES = ("gp", "saasbo")


NUTS_FIELDS = ("nuts_warmup", "nuts_samples", "nuts_thinning", "nuts_max_tree_depth")


@dataclass
class AcquisitionOptions:
    """How hard ``optimize_acqf`` works per round (defaults fit d ≈ 30, q ≈ 8 on a CPU) and,
    for ``surrogate="saasbo"``, how long each NUTS chain runs.

    The NUTS defaults are a CPU's: 256 warm-up and 128 further steps thinned by 16 leave 8
    hyperparameter samples per outcome (BoTorch's own: 512 / 256 / 16, 16 samples, and
    every kept sample multiplies the acquisition's cost). At the tuner's data sizes (tens of
    points) a fit's time is mostly JAX compiling the chain, not its steps: a whole constrained
    run on a 30-d problem, 32 points (bench/bench_search_spaces.py, a shared 2-core CPU, one
    thread), took 129 s with 64 / 64 / 8, 140 s with 256 / 128 / 16 and 153 s with 512 / 256 /
    16, and the smallest chains' posteriors missed the relevant coordinates."""

    num_restarts: int = 8
    raw_samples: int = 256
    mc_samples: int = 128  # QMC samples of the joint posterior in qLogNEI
    maxiter: int = 100  # L-BFGS-B iterations per restart
    nuts_warmup: int = 256  # NUTS burn-in steps (SAASBO only)
    nuts_samples: int = 128  # NUTS steps after the burn-in; every nuts_thinning-th is kept
    nuts_thinning: int = 16
    nuts_max_tree_depth: int = 6  # at most 2^depth − 1 leapfrog steps per NUTS step

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise TunerError(f"AcquisitionOptions.{name} must be a positive int, got {value!r}")
        if self.nuts_thinning > self.nuts_samples:
            raise TunerError(f"AcquisitionOptions: nuts_thinning {self.nuts_thinning} keeps no sample of "
                             f"nuts_samples {self.nuts_samples}; use nuts_thinning <= nuts_samples")

    @property
    def nuts_kept(self) -> int:
        """Hyperparameter samples a NUTS chain leaves (the SAAS GP's ensemble size)."""
        return -(-self.nuts_samples // self.nuts_thinning)

    def to_dict(self, surrogate: str = "gp") -> dict[str, int]:
        """The options as saved in the history; the NUTS sizes only for SAASBO."""
        doc = asdict(self)
        if surrogate != "saasbo":
            for name in NUTS_FIELDS:
                del doc[name]
        return doc


def check_surrogate(surrogate: str) -> str:
    """``surrogate`` if it is a known choice whose packages are installed, else a TunerError.

    SAASBO needs BoTorch's fully Bayesian models: from BoTorch 0.18 on they run NUTS in
    JAX/NumPyro (``pip install "botorch[fully-bayesian]"``, part of ``pysteer[tune]``);
    earlier BoTorch runs it in Pyro, which it installs itself."""
    if surrogate not in SURROGATES:
        raise TunerError(f"surrogate must be one of {', '.join(SURROGATES)}, got {surrogate!r}")
    if surrogate == "saasbo":
        _single_threaded_xla()
        try:
            from botorch.models import fully_bayesian

            check = getattr(fully_bayesian, "_check_jax_available", None)
            if check is not None:
                check()
        except ImportError as exc:
            raise TunerError(f"surrogate 'saasbo' needs BoTorch's fully Bayesian models, which could not be "
                             f"loaded ({exc}); install them with: pip install \"botorch[fully-bayesian]\"") from None
    return surrogate


def _single_threaded_xla() -> None:
    """Before JAX first starts: one XLA CPU thread, unless the user set XLA_FLAGS. The NUTS
    chains' matrices are a few dozen wide, so (as for the GP's BLAS below) thread hand-offs
    cost more than they save, and on a shared CPU they slow the chain down."""
    if "jax" not in sys.modules and "XLA_FLAGS" not in os.environ:
        os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


@dataclass
class TuneResult:
    """``best`` is the best feasible record; when no record met every bound, ``feasible`` is
    False and ``best`` is the least-violating record (flagged, never passed off as feasible).
    ``pareto``: the feasible non-dominated records (several objectives), else ``[best]`` if feasible."""

    history: History
    best: Record
    out_dir: Path
    feasible: bool = True
    pareto: list[Record] = field(default_factory=list)

    @property
    def goal(self) -> Goal:
        return self.history.goal

    @property
    def pareto_path(self) -> Path:
        return self.out_dir / PARETO_FILE

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
            options: Optional[AcquisitionOptions] = None, surrogate: Optional[str] = None) -> torch.Tensor:
    """q candidates [q, d] (box units) from a GP fitted to ``history`` and qLogNEI (or, for a
    history with a non-default goal, the goal's acquisition: see the module docstring).

    ``surrogate``: "gp" or "saasbo" (default: the one the history's settings record, else "gp")."""
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.optim import optimize_acqf
    from botorch.sampling.normal import SobolQMCNormalSampler

    options = options or AcquisitionOptions()
    surrogate = check_surrogate(surrogate or history.settings.get("surrogate", "gp"))
    box = history.box
    if not history.records:
        raise TunerError("propose needs at least one evaluated candidate")
    X = box.normalize(torch.tensor([r.candidate for r in history.records], dtype=torch.float64))
    goal = history.goal
    if goal.is_default:
        Y = torch.tensor([[r.reward] for r in history.records], dtype=torch.float64)
    else:
        rows = [goal.values({"reward": r.reward, **r.metrics}, f"round {r.round}, candidate {r.index}")
                for r in history.records]
        Y = torch.tensor([[row[n] for n in goal.outcomes] for row in rows], dtype=torch.float64)
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
            gp = fit_surrogate(X, Y, surrogate, options, seed)
            sampler = SobolQMCNormalSampler(sample_shape=torch.Size([options.mc_samples]), seed=seed)
            if goal.is_default:
                acq = qLogNoisyExpectedImprovement(gp, X_baseline=X, sampler=sampler, prune_baseline=True)
            else:
                acq = _goal_acquisition(goal, gp, X, Y, sampler)
            U, _ = optimize_acqf(acq, bounds=unit, q=q, num_restarts=options.num_restarts,
                                 raw_samples=options.raw_samples, sequential=goal.multi,
                                 options={"seed": seed, "maxiter": options.maxiter,
                                          "batch_limit": options.num_restarts})
    finally:
        torch.set_num_threads(threads)
    return box.unnormalize(U.detach().clamp(0.0, 1.0))


def fit_surrogate(X: torch.Tensor, Y: torch.Tensor, surrogate: str, options: AcquisitionOptions,
                  seed: int) -> Any:
    """The fitted model of outcomes ``Y`` [n, m] at unit inputs ``X`` [n, d] (see the module
    docstring): a SingleTaskGP over all m outcomes, or SAAS GPs — one, or m in a ModelListGP,
    outcome j's NUTS chain seeded by (``seed``, j)."""
    from botorch.models.transforms.outcome import Standardize

    if surrogate == "gp":
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from gpytorch.mlls import ExactMarginalLogLikelihood

        gp = SingleTaskGP(X, Y, outcome_transform=Standardize(m=Y.shape[1]))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
        return gp
    from botorch.fit import fit_fully_bayesian_model_nuts
    from botorch.models import ModelListGP
    from botorch.models.fully_bayesian import SaasFullyBayesianSingleTaskGP

    # BoTorch ≥ 0.18 (NumPyro) takes the chain's seed; earlier ones (Pyro) draw from torch's
    # generator, which the caller has seeded with the round's seed.
    seeded = "seed" in inspect.signature(fit_fully_bayesian_model_nuts).parameters
    models = []
    for j in range(Y.shape[1]):
        chain_seed = (seed + 7_919 * j) % (2**31 - 1)
        if not seeded:
            torch.manual_seed(chain_seed)
        model = SaasFullyBayesianSingleTaskGP(X, Y[:, j:j + 1], outcome_transform=Standardize(m=1))
        fit_fully_bayesian_model_nuts(model, warmup_steps=options.nuts_warmup, num_samples=options.nuts_samples,
                                      thinning=options.nuts_thinning, max_tree_depth=options.nuts_max_tree_depth,
                                      disable_progbar=True, **({"seed": chain_seed} if seeded else {}))
        models.append(model)
    return models[0] if len(models) == 1 else ModelListGP(*models)


def _constraint_callables(goal: Goal) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """One callable per bound on posterior samples Z [..., q, m]: ≤ 0 where the bound holds."""
    out = []
    for c in goal.constraints:
        j, b = goal.outcomes.index(c.outcome), c.bound
        out.append((lambda Z, j=j, b=b: Z[..., j] - b) if c.op == "<=" else (lambda Z, j=j, b=b: b - Z[..., j]))
    return out


def reference_point(goal: Goal, Y: torch.Tensor) -> torch.Tensor:
    """The hypervolume reference point [k] in the signed (maximised) objectives: the goal's
    own, else BoTorch's ``infer_reference_point`` over the feasible rows of ``Y`` [n, m]
    (all rows when none is feasible): their nadir moved 10% of their range outwards."""
    from botorch.utils.multi_objective import infer_reference_point, is_non_dominated

    names, signs = goal.names_signs
    if goal.ref_point is not None:
        return torch.tensor([s * goal.ref_point[n] for n, s in zip(names, signs)], dtype=torch.float64)
    signed = Y[:, :len(names)] * torch.tensor(signs, dtype=torch.float64)
    ok = torch.tensor([goal.feasible(dict(zip(goal.outcomes, row.tolist()))) for row in Y], dtype=torch.bool)
    pool = signed[ok] if ok.any() else signed
    return infer_reference_point(pool[is_non_dominated(pool)])


def _goal_acquisition(goal: Goal, gp: Any, X: torch.Tensor, Y: torch.Tensor, sampler: Any) -> Any:
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
    from botorch.acquisition.multi_objective.objective import WeightedMCMultiOutputObjective
    from botorch.acquisition.objective import GenericMCObjective

    names, signs = goal.names_signs
    constraints = _constraint_callables(goal) or None
    if not goal.multi:
        sign = signs[0]
        objective = GenericMCObjective(lambda Z, X=None: sign * Z[..., 0])
        return qLogNoisyExpectedImprovement(gp, X_baseline=X, sampler=sampler, objective=objective,
                                            constraints=constraints, prune_baseline=True)
    objective = WeightedMCMultiOutputObjective(torch.tensor(signs, dtype=torch.float64),
                                               outcomes=list(range(len(names))))
    return qLogNoisyExpectedHypervolumeImprovement(gp, ref_point=reference_point(goal, Y), X_baseline=X,
                                                   sampler=sampler, objective=objective,
                                                   constraints=constraints, prune_baseline=True)


def _prepare_out_dir(out: Path, resume: bool, overwrite: bool) -> Optional[History]:
    """The saved history to continue from, or None for a fresh start (after checking ``out``)."""
    path = out / HISTORY_FILE
    if path.exists():
        if resume:
            return History.load(path)
        if not overwrite:
            raise FileExistsError(f"{path} exists: resume it (resume=True / drop --no-resume) or pass "
                                  f"overwrite=True (--overwrite) to start over")
        for name in (HISTORY_FILE, PLOT_FILE, PARETO_FILE):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / BEST_SPEC_DIR, ignore_errors=True)
        shutil.rmtree(out / PARETO_DIR, ignore_errors=True)
        return None
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and holds no {HISTORY_FILE}: choose a new output "
                              f"directory or pass overwrite=True (--overwrite)")
    return None


def _check_compatible(history: History, box: Box, seed: int, q: int, n_init: int, path: Path,
                      goal: Optional[Goal] = None, surrogate: str = "gp") -> None:
    # A history from before the surrogate was recorded was fitted by the plain GP.
    for name, saved, now in (("seed", history.seed, seed), ("q", history.q, q),
                             ("n_init", history.n_init, n_init),
                             ("surrogate", history.settings.get("surrogate", "gp"), surrogate)):
        if saved != now:
            raise TunerError(f"{path}: the saved run used {name}={saved}, this call {name}={now}; "
                             f"use the same settings to resume, or a new output directory")
    if not history.box.same_as(box):
        raise TunerError(f"{path}: the saved run searched a different box (other features or bounds); "
                         f"use a new output directory")
    describe = getattr(box, "describe", None)
    saved_space = history.settings.get("space")
    if callable(describe) and saved_space is not None and json_safe(describe()) != saved_space:
        raise TunerError(f"{path}: the saved run searched a different parametrisation (other groups or "
                         f"scales); use a new output directory")
    goal = goal or Goal()
    if goal.to_dict() != history.goal.to_dict():
        raise TunerError(f"{path}: the saved run's goal was '{history.goal.describe()}', this call's is "
                         f"'{goal.describe()}' (other objectives, outcome constraints or reference point); "
                         f"use the same ones to resume, or a new output directory")


def _check_results(results: Any, q: int, round_index: int, goal: Optional[Goal] = None) -> list[dict]:
    if not isinstance(results, (list, tuple)) or len(results) != q:
        raise TunerError(f"round {round_index}: the objective must return a list of {q} dicts "
                         f"(one per candidate), got {type(results).__name__}"
                         + (f" of length {len(results)}" if hasattr(results, "__len__") else ""))
    if goal is not None and not goal.is_default:
        for i, res in enumerate(results):
            if not isinstance(res, dict):
                raise TunerError(f"round {round_index}: result {i} must be a dict of outcomes")
            goal.values(res, f"round {round_index}, candidate {i}")
        return list(results)
    for i, res in enumerate(results):
        if not isinstance(res, dict) or "reward" not in res:
            raise TunerError(f"round {round_index}: result {i} must be a dict with a 'reward'")
        value = float(res["reward"])
        if value != value or value in (float("inf"), float("-inf")):
            raise TunerError(f"round {round_index}: candidate {i} has a non-finite reward {value}")
    return list(results)


def _record(goal: Goal, r: int, i: int, proposer: str, x: torch.Tensor, res: dict, seconds: float) -> Record:
    """One result dict → a Record; with a goal, the (signed) first objective is its reward and
    every returned value, "reward" included, stays in its metrics."""
    if goal.is_default:
        metrics = json_safe({k: v for k, v in res.items() if k != "reward"})
        return Record(r, i, proposer, x.tolist(), float(res["reward"]), metrics, seconds)
    values = goal.values(res, f"round {r}, candidate {i}")
    names, signs = goal.names_signs
    own_reward = names[0] == "reward" and signs[0] > 0  # stored as Record.reward: not repeated
    metrics = json_safe({k: v for k, v in res.items() if not (own_reward and k == "reward")})
    feasible = goal.feasible(values) if goal.constraints else None
    violation = goal.violation(values) if goal.constraints else None
    return Record(r, i, proposer, x.tolist(), goal.signed(values)[0], metrics, seconds, feasible, violation)


def _spec_of(box: SearchSpace, history: History, rec: Record, **extra: Any):
    spec = box.spec_for(torch.tensor([rec.candidate], dtype=torch.float64))
    info = {"reward": rec.reward, "round": rec.round, "index": rec.index, "seed": history.seed,
            "metrics": rec.metrics, "coordinates": box.names, "history": HISTORY_FILE}
    if not history.goal.is_default:
        info.update(goal=history.goal.to_dict(), feasible=rec.feasible is not False, violation=rec.violation)
    spec.metadata = {**spec.metadata, "tuner": {**info, **extra}}
    return spec


def _write_pareto(history: History, box: Box, out: Path) -> None:
    """``pareto.json`` (the feasible Pareto records with their objectives) and, for a
    :class:`SearchSpace`, one spec per Pareto record under ``pareto/<i>/``."""
    from ..fileio import write_json_atomic

    front = history.pareto()
    names = history.goal.names_signs[0]
    shutil.rmtree(out / PARETO_DIR, ignore_errors=True)
    rows = []
    for i, rec in enumerate(front):
        row = {"round": rec.round, "index": rec.index, "candidate": rec.candidate,
               "objectives": {n: rec.outcome(n) for n in names},
               "outcomes": {n: rec.outcome(n) for n in history.goal.outcomes}}
        if isinstance(box, SearchSpace):
            _spec_of(box, history, rec, pareto_index=i).save(out / PARETO_DIR / str(i), overwrite=True)
            row["spec"] = f"{PARETO_DIR}/{i}"
        rows.append(row)
    write_json_atomic(out / PARETO_FILE, json_safe({"goal": history.goal.to_dict(), "feasible": bool(front),
                                                   "pareto": rows}), allow_nan=False)


def _write_outputs(history: History, box: Box, out: Path, plot: bool) -> None:
    history.save(out / HISTORY_FILE)
    best = history.best()
    if best is None:
        return
    if isinstance(box, SearchSpace):
        # ours: the directory holds our history
        _spec_of(box, history, best).save(out / BEST_SPEC_DIR, overwrite=True)
    if history.goal.multi:
        _write_pareto(history, box, out)
    if plot:
        plot_history(history, out / PLOT_FILE)


def tune(evaluate: Objective, box: Box, out_dir: Union[str, Path], *, rounds: int, q: int,
         seed: int = 0, n_init: Optional[int] = None, initial: Optional[torch.Tensor] = None,
         resume: bool = True, overwrite: bool = False, progress: bool = True,
         options: Optional[AcquisitionOptions] = None,
         settings: Optional[dict[str, Any]] = None,
         objective: Union[None, str, Sequence[str]] = None, constraints: ConstraintsArg = None,
         ref_point: Optional[dict[str, float]] = None, surrogate: str = "gp") -> TuneResult:
    """Maximise ``evaluate`` over ``box`` for ``rounds`` rounds; returns the history and best.

    By default the scalar ``"reward"`` is maximised. ``objective`` names another outcome of
    the result dicts to maximise (``"-name"`` minimises it) or, as a list of two or more,
    the objectives of a multi-objective run (qLogNEHVI; ``ref_point`` in their own units,
    default inferred: see :class:`~pysteer.tuner.outcomes.Goal`). ``constraints`` bounds
    outcomes, ``{"degenerate_rate": ("<=", 0.1), "rr": (">=", 0.9)}``: every named outcome
    gets its own GP, the acquisition weighs candidates by their probability of meeting
    the bounds, and ``best`` is the best *feasible* record (``TuneResult.feasible`` is
    False, with a warning, when none is; ``best`` is then the least-violating one).
    A multi-objective run also writes ``pareto.json`` and ``pareto/<i>/`` (one spec per
    feasible Pareto record when ``box`` is a :class:`SearchSpace`).

    ``surrogate`` models the outcomes: ``"gp"`` (SingleTaskGP) or ``"saasbo"`` (a fully
    Bayesian SAAS GP per outcome, NUTS sized by ``options``; for many coordinates of which
    few matter). It is saved in the history's settings, and a run is resumed only with
    the surrogate it was started with.

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
    surrogate = check_surrogate(surrogate)
    goal = Goal.make(objective, constraints, ref_point)
    out = Path(out_dir)
    history = _prepare_out_dir(out, resume, overwrite)
    if history is None:
        extra = {"space": json_safe(box.describe())} if callable(getattr(box, "describe", None)) else {}
        history = History(int(seed), int(q), n_init, Box(box.lower, box.upper, box.names, box.sources),
                          settings={"acquisition": options.to_dict(surrogate), **json_safe(settings or {}), **extra,
                                    "surrogate": surrogate},
                          goal=goal)
        out.mkdir(parents=True, exist_ok=True)
        history.save(out / HISTORY_FILE)  # claims the directory before the first evaluation
    else:
        _check_compatible(history, box, int(seed), int(q), n_init, out / HISTORY_FILE, goal, surrogate)
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
                X, proposers = propose(history, q, r, options, surrogate), [goal.acquisition] * q
            if hasattr(evaluate, "set_round"):
                evaluate.set_round(r)
            start = time.perf_counter()
            results = _check_results(evaluate(X.clone()), X.shape[0], r, goal)
            seconds = time.perf_counter() - start
            for i, (x, res, proposer) in enumerate(zip(X, results, proposers)):
                history.records.append(_record(goal, r, i, proposer, x, res, round(seconds, 4)))
            _write_outputs(history, box, out, plot=False)  # plotting every round costs ~0.5 s
            bar.update(1)
            bar.set_postfix(best=f"{history.best().reward:.4g}"
                            + ("" if history.best_is_feasible() else " (infeasible)"))
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
    feasible = history.best_is_feasible()
    if not feasible:
        best = history.best()
        warnings.warn(f"tune: no evaluated candidate meets every bound ({goal.describe()}); the result is the "
                      f"least-violating one (round {best.round}, candidate {best.index}, violation "
                      f"{best.violation:.3g}), flagged infeasible", stacklevel=2)
    return TuneResult(history, history.best(), out, feasible, history.pareto())
