"""The experiment's vocabulary — methods, settings, budgets — importable without torch
(``pysteer demo --help`` offers them as choices)."""

METHODS = ("diff-means", "saif", "concise")
SAE_METHODS = ("saif", "concise")
TUNED_METHODS = ("concise",)
# (key, instruction in the prompt?) — each evaluated unsteered and steered by every method
SETTINGS = (("no_instruction", False), ("instruction", True))
UNSTEERED = "unsteered"
BUDGET_NAMES = ("demo", "report")  # the Budget classmethods pipeline.BUDGETS maps them to
