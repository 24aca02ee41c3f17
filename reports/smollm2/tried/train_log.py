"""What every probe under ``tried/`` records: each train frontier with the strength the report's
rule (:func:`pysteer.experiment.frontier.best_point` under ``REPORT_BOUNDS``) picks from it, as
JSON and as the markdown tables its ``results.md`` shows. The probes run as scripts and put this
folder on ``sys.path`` to import it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from pysteer.experiment.frontier import REPORT_BOUNDS, Frontier, best_point, format_frontier, sweep


class TrainLog:
    def __init__(self, title: str, **header: Any) -> None:
        self.title = title
        self.doc: dict[str, Any] = {"bounds": REPORT_BOUNDS.to_json(), **header, "frontiers": {}}
        self.lines: list[str] = []
        self.start = time.perf_counter()

    def add(self, key: str, heading: str, frontier: Frontier, **extra: Any) -> Optional[float]:
        """Record ``frontier`` under ``key``; the strength the report's rule chooses (None: no steering)."""
        _, point = best_point({key: frontier}, REPORT_BOUNDS)
        chosen = None if point is None else point.strength
        self.doc["frontiers"][key] = {**frontier.to_json(), "operating_strength": chosen, **extra}
        table = format_frontier(frontier, chosen=0.0 if chosen is None else chosen)
        heading = f"{heading} (operating point: {'none' if chosen is None else chosen})"
        self.lines += [f"### {heading}", "", "```", table, "```", ""]
        print(f"{heading}  [{time.perf_counter() - self.start:.0f} s]\n{table}", flush=True)
        return chosen

    def sweep_runs(self, model, tokenizer, vectors, prompts, runs, max_new_tokens: int,
                   json_path: Optional[Path] = None, markdown_path: Optional[Path] = None) -> None:
        """Each (layer, positions, strengths) of ``runs``: ``vectors[layer]`` (a DiffMeanResult)
        added on those positions, swept over those strengths on ``prompts`` and recorded; with
        the paths, the log is written after every run (a long probe keeps what it measured)."""
        for layer, positions, strengths in runs:
            label = f"layer {layer}, positions {positions}"
            frontier = sweep(model, tokenizer, vectors[layer].spec("add", positions=positions), prompts, strengths,
                             max_new_tokens=max_new_tokens, label=label)
            self.add(f"{label} {strengths}", f"{label}, ‖v‖ = {vectors[layer].norm:.1f}, {vectors[layer].n_pairs} answers",
                     frontier,
                     vector_norm=vectors[layer].norm, n_answers=vectors[layer].n_pairs)
            if json_path is not None:
                self.write(json_path, markdown_path)

    def write(self, json_path: Path, markdown_path: Path) -> None:
        self.doc["seconds"] = round(time.perf_counter() - self.start, 1)
        json_path.write_text(json.dumps(self.doc, indent=1))
        markdown_path.write_text(f"# {self.title}\n\n`>` the operating point by the report's rule, `*` within "
                                 "the bounds.\n\n" + "\n".join(self.lines))
