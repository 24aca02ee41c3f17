"""Tune steering coefficients by Bayesian optimisation, many candidates per generation.

    from pysteer.tuner import BatchedObjective, search_space, tune

    space = search_space(template_spec, stats="stats.json")       # the box over the coefficients
    objective = BatchedObjective(model, tokenizer, space, prompts, minibatch=8, max_new_tokens=32)
    result = tune(objective, space, "tuned", rounds=10, q=8, seed=0,
                  initial=space.vector().unsqueeze(0))           # the template's row first
    best = pysteer.SteeringSpec.load("tuned/best_spec")

``tune`` takes any objective ``evaluate(X [q, d]) -> [{"reward": ..., ...}] * q``.

Quality as bounds, several objectives, a low-dimensional space::

    space = grouped_search_space(template_spec, stats="stats.json", groups="sign")  # 2 strengths
    result = tune(objective, space, "tuned", rounds=10, q=8, objective="ifr_loose",
                  constraints={"degenerate_rate": ("<=", 0.1), "rr": (">=", 0.9)})
    result.feasible, result.best                                  # best feasible (or flagged)
    front = tune(..., objective=["ifr_loose", "-degenerate_rate"]).pareto   # + pareto.json, pareto/<i>/

Names are imported on first use (:mod:`pysteer._lazy`).
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".bo": ("tune", "propose", "initial_design", "round_seed", "AcquisitionOptions", "TuneResult", "SURROGATES",
            "check_surrogate", "fit_surrogate"),
    ".bounds": ("Box", "SearchSpace", "Coordinate", "search_space", "load_stats", "DEFAULT_BOUNDS", "TunerError",
                "GroupedSearchSpace", "grouped_search_space"),
    ".outcomes": ("Goal", "Constraint", "pareto_mask"),
    ".history": ("History", "Record", "plot_history"),
    ".objective": ("BatchedObjective", "SequentialObjective", "make_objective"),
})

if TYPE_CHECKING:
    from .bo import (SURROGATES, AcquisitionOptions, TuneResult, check_surrogate, fit_surrogate, initial_design,
                     propose, round_seed, tune)
    from .bounds import (DEFAULT_BOUNDS, Box, Coordinate, GroupedSearchSpace, SearchSpace, TunerError,
                         grouped_search_space, load_stats, search_space)
    from .outcomes import Constraint, Goal, pareto_mask
    from .history import History, Record, plot_history
    from .objective import BatchedObjective, SequentialObjective, make_objective
