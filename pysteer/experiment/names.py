"""The experiment's vocabulary — methods, settings, budgets — importable without torch
(``pysteer demo --help`` offers them as choices)."""

METHODS = ("diff-means", "saif", "concise")
SAE_METHODS = ("saif", "concise")
TUNED_METHODS = ("concise",)
# (key, instruction in the prompt?) — each evaluated unsteered and steered by every method
SETTINGS = (("no_instruction", False), ("instruction", True))
UNSTEERED = "unsteered"
# The plain difference-in-means vector (projection form at z̄, the experiment's layer, nothing
# chosen): evaluated beside the methods as the baseline tuning must beat.
UNTUNED = "untuned-dm"
FRONTIER_PLOT = "frontier.png"
BUDGET_NAMES = ("demo", "report")  # the Budget classmethods pipeline.BUDGETS maps them to
