"""The tuner's history file and its plot.

``history.json`` holds everything needed to understand and to resume a run: the
settings (seed, q, initial design size), the box, and one record per evaluated
candidate (round, index in the round, how it was proposed, the candidate, its reward
and metrics). It is rewritten after every round through a temporary file and
``os.replace``, so a crash leaves either the previous complete file or the new one,
never a half-written one.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..fileio import read_json_object, write_json_atomic
from .bounds import Box, TunerError

HISTORY_FORMAT, HISTORY_VERSION = "pysteer.tuner.history", 1


@dataclass
class Record:
    """One evaluated candidate."""

    round: int
    index: int  # position within its round
    proposer: str  # "sobol" | "template" | "qLogNEI"
    candidate: list[float]  # [d], in the box's units
    reward: float
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # wall-clock of the round's evaluation, shared by its candidates


@dataclass
class History:
    seed: int
    q: int
    n_init: int
    box: Box
    records: list[Record] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # acquisition options, objective info

    @property
    def rounds_done(self) -> int:
        return 1 + max((r.round for r in self.records), default=-1)

    def best(self) -> Optional[Record]:
        """The record with the highest reward (the earliest one on ties)."""
        best = None
        for r in self.records:
            if best is None or r.reward > best.reward:
                best = r
        return best

    def to_dict(self) -> dict[str, Any]:
        best = self.best()
        return {"format": HISTORY_FORMAT, "version": HISTORY_VERSION, "seed": self.seed, "q": self.q,
                "n_init": self.n_init, "rounds_done": self.rounds_done, "box": self.box.to_dict(),
                "settings": self.settings,
                "best": None if best is None else asdict(best),
                "records": [asdict(r) for r in self.records]}

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_dict(), allow_nan=False)

    @classmethod
    def load(cls, path: Path) -> "History":
        doc = read_json_object(path, TunerError)
        if doc.get("format") != HISTORY_FORMAT:
            raise TunerError(f"{path}: not a pysteer tuner history (no \"format\": \"{HISTORY_FORMAT}\")")
        if doc.get("version") != HISTORY_VERSION:
            raise TunerError(f"{path}: history version {doc.get('version')!r} is not supported")
        try:
            records = [Record(**r) for r in doc["records"]]
            return cls(int(doc["seed"]), int(doc["q"]), int(doc["n_init"]), Box.from_dict(doc["box"]),
                       records, doc.get("settings") or {})
        except (KeyError, TypeError) as exc:
            raise TunerError(f"{path}: malformed history ({exc})") from None


def json_safe(value: Any) -> Any:
    """Metrics → plain JSON (tensors → lists, non-finite floats → None, objects → str)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # tensors, numpy arrays and scalars
        return json_safe(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def plot_history(history: History, path: Path) -> Path:
    """``reward.png``: every candidate as a dot at its round, and the best-so-far line."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display; a no-op if a backend is already set up
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    try:
        colors = {"sobol": "tab:gray", "template": "tab:green", "qLogNEI": "tab:blue"}
        for proposer in sorted({r.proposer for r in history.records}):
            pts = [r for r in history.records if r.proposer == proposer]
            ax.scatter([r.round for r in pts], [r.reward for r in pts], s=14, alpha=0.7,
                       color=colors.get(proposer, "tab:orange"), label=proposer)
        best, line = -math.inf, []
        for rnd in range(history.rounds_done):
            best = max([best] + [r.reward for r in history.records if r.round == rnd])
            line.append(best)
        ax.plot(range(len(line)), line, color="tab:red", lw=1.8, label="best so far")
        ax.set_xlabel("round")
        ax.set_ylabel("reward")
        ax.set_title(f"pysteer tune: q={history.q}, seed={history.seed}, d={history.box.d}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
    return path
