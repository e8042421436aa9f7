"""What a fine-tuning run tells its caller: progress events as it goes (:class:`Reporter`), a summary at the end.

The library prints nothing: the command line passes a :class:`Reporter` that draws a progress bar
(``pointtrack_cli.cli.finetune``); Python callers may pass their own or none.
"""
from __future__ import annotations

from dataclasses import dataclass, field


class Reporter:
    """Receives a run's events; this base class ignores them all (a quiet run).

    ``start(total, done)``: the loop begins, ``done`` of ``total`` steps already made (a resumed run);
    ``step(record)``: a step finished (``record`` = its ``metrics.jsonl`` line: step, loss, lr, grad_norm, ...);
    ``message(text)``: one line for the user (skipped paths, loaded teachers, evaluations);
    ``stop()``: the loop ended or failed (may be called twice).
    Only rank 0's reporter receives events; the other processes get a quiet one.
    """

    def start(self, total: int, done: int) -> None: ...

    def step(self, record: dict) -> None: ...

    def message(self, text: str) -> None: ...

    def stop(self) -> None: ...


@dataclass
class FinetuneSummary:
    """What a run did (returned on every rank; files are written by rank 0)."""

    run_dir: str
    steps_done: int
    start_step: int
    total_steps: int
    seconds: float
    final_loss: float | None
    best: dict | None
    last_weights: str | None
    clips: int
    videos: int
    skipped: list[dict] = field(default_factory=list)
    labels_computed: int = 0
    labels_reused: int = 0
    evals: list[dict] = field(default_factory=list)
