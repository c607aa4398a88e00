"""fastalign: fused linear log-probs, cross-entropy and alignment losses that never materialize the logits."""

from fastalign import losses
from fastalign.cross_entropy import FusedLinearCrossEntropyLoss, linear_cross_entropy
from fastalign.logprobs import linear_logprobs, linear_logprobs_loss
from fastalign.losses.fused import FusedLinearCPOLoss, FusedLinearDPOLoss, FusedLinearKTOLoss, FusedLinearORPOLoss
from fastalign.sequence_logprobs import count_empty, sequence_logprobs, sequence_token_counts

__version__ = "0.1.0"

__all__ = [
    "FusedLinearCPOLoss",
    "FusedLinearCrossEntropyLoss",
    "FusedLinearDPOLoss",
    "FusedLinearKTOLoss",
    "FusedLinearORPOLoss",
    "count_empty",
    "linear_cross_entropy",
    "linear_logprobs",
    "linear_logprobs_loss",
    "losses",
    "sequence_logprobs",
    "sequence_token_counts",
]
