"""Training: objectives (``objectives.py``), the Trainer subclass (``trainer.py``), the config-driven recipe
(``recipe.py``) and run reports (``report.py``)."""

from fastalign.training.objectives import OBJECTIVES, Objective, next_token_loss
from fastalign.training.recipe import prepare_data, train
from fastalign.training.trainer import FastAlignTrainer, NonFiniteGuard, NonFiniteLossError

__all__ = [
    "OBJECTIVES",
    "FastAlignTrainer",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "Objective",
    "next_token_loss",
    "prepare_data",
    "train",
]
