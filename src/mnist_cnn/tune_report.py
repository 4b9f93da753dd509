"""A study's trials as a table and a picture: the score of each trial, the best so far, and each option's weight."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import atomic_write_bytes

if TYPE_CHECKING:
    from .tune import TuneResult


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def format_trials(result: TuneResult) -> str:
    """One line per trial: its state, score, settings and seconds; then the best trial and the importances."""
    names = list(dict.fromkeys(name for row in result.trials for name in row["params"]))
    head = ("trial", "state", result.objective, *(n.rsplit(".", 1)[-1] for n in names), "seconds")
    rows = [(str(r["trial"]), r["state"].lower() + (f" (retry of {r['retry_of']})" if r["retry_of"] is not None
                                                    else ""),
             "-" if r["value"] is None else f"{r['value']:.4f}", *(_value(r["params"].get(n)) for n in names),
             "-" if r["seconds"] is None else f"{r['seconds']:.1f}") for r in result.trials]
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))

    lines = [f"{result.name}: {len(result.trials)} trials in {result.storage}", line(head),
             "  ".join("-" * w for w in widths), *(line(r) for r in rows)]
    if result.best:
        lines.append(f"best: trial {result.best['trial']}, {result.objective} {result.best['value']:.4f}; "
                     f"recipe: {result.recipe}")
    if result.importances:
        lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in result.importances.items()))
    return "\n".join(lines)


def plot_trials(result: TuneResult, path: str | os.PathLike) -> Path:
    """Each trial's score against its number (pruned trials at their last epoch's score), the best so far, and
    beside it the options' importances where Optuna could compute them."""
    from matplotlib.figure import Figure  # lazy: matplotlib is an optional extra

    panels = 2 if result.importances else 1
    fig = Figure(figsize=(5.5 * panels, 4))
    ax = fig.add_subplot(1, panels, 1)
    maximize = result.objective == "val_accuracy"
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        rows = [r for r in result.trials if r["state"] == state and r["value"] is not None]
        ax.scatter([r["trial"] for r in rows], [r["value"] for r in rows], marker=marker, label=state.lower())
    best, xs, ys = None, [], []
    for r in result.trials:
        if r["state"] == "COMPLETE" and r["value"] is not None:
            if best is None or (r["value"] > best if maximize else r["value"] < best):
                best = r["value"]
            xs.append(r["trial"])
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="black", linewidth=1, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(result.objective + " (validation)")
    ax.set_title(result.name)
    ax.legend(loc="best")
    if result.importances:
        bars = fig.add_subplot(1, panels, 2)
        names = list(result.importances)[::-1]
        bars.barh(names, [result.importances[n] for n in names])
        bars.set_xlabel("importance (fANOVA)")
        bars.set_xlim(0, max(1.0, *(v for v in result.importances.values() if math.isfinite(v))))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(path, buf.getvalue())
