"""Tune steering coefficients by Bayesian optimisation, many candidates per generation.

    from pysteer.tuner import BatchedObjective, search_space, tune

    space = search_space(template_spec, stats="stats.json")       # the box over the coefficients
    objective = BatchedObjective(model, tokenizer, space, prompts, minibatch=8, max_new_tokens=32)
    result = tune(objective, space, "tuned", rounds=10, q=8, seed=0,
                  initial=space.vector().unsqueeze(0))           # the template's row first
    best = pysteer.SteeringSpec.load("tuned/best_spec")

``tune`` takes any objective ``evaluate(X [q, d]) -> [{"reward": ..., ...}] * q``.
"""

from .bo import AcquisitionOptions, TuneResult, initial_design, propose, round_seed, tune
from .bounds import DEFAULT_BOUNDS, Box, Coordinate, SearchSpace, TunerError, load_stats, search_space
from .history import History, Record, plot_history
from .objective import BatchedObjective, SequentialObjective, make_objective

__all__ = ["tune", "propose", "initial_design", "round_seed", "AcquisitionOptions", "TuneResult",
           "Box", "SearchSpace", "Coordinate", "search_space", "load_stats", "DEFAULT_BOUNDS",
           "TunerError", "History", "Record", "plot_history", "BatchedObjective",
           "SequentialObjective", "make_objective"]
