"""Training: objectives (``objectives.py``), the Trainer subclass (``trainer.py``), the config-driven recipe
(``recipe.py``) and run reports (``report.py``); preference objectives in ``preference.py``, the reference policy in
``reference.py``."""

from fastalign.training.objectives import OBJECTIVES, Objective, next_token_loss, preference_objective
from fastalign.training.preference import make_objective
from fastalign.training.recipe import prepare_data, train
from fastalign.training.trainer import FastAlignTrainer, NonFiniteGuard, NonFiniteLossError

__all__ = [
    "OBJECTIVES",
    "FastAlignTrainer",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "Objective",
    "make_objective",
    "next_token_loss",
    "preference_objective",
    "prepare_data",
    "train",
]
