"""What a run leaves behind besides the model: ``metrics.json`` and ``training_curves.png``."""

from __future__ import annotations

import json
from pathlib import Path


def write_metrics(metrics: dict, path: str | Path) -> None:
    with open(path, "w") as f:
        json.dump(metrics, f, indent=2, default=str)


def plot_training_curves(stages: dict[str, list[dict]], path: str | Path) -> None:
    """One panel per stage: training loss per logged step, and held-out loss where it was evaluated.

    Args:
        stages: {stage name: ``trainer.state.log_history``}.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.5), squeeze=False)
    for ax, (name, history) in zip(axes[0], stages.items()):
        for key, style in (("loss", "-"), ("eval_loss", "o--")):
            points = [(entry["step"], entry[key]) for entry in history if key in entry]
            if points:
                ax.plot(*zip(*points), style, label="train" if key == "loss" else "held-out")
        ax.set(title=name, xlabel="optimizer step", ylabel="cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
