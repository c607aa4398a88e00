"""fastalign: fused linear log-probs, cross-entropy and alignment losses that never materialize the logits."""

from fastalign.cross_entropy import FusedLinearCrossEntropyLoss, linear_cross_entropy
from fastalign.logprobs import linear_logprobs

__version__ = "0.1.0"

__all__ = ["FusedLinearCrossEntropyLoss", "linear_cross_entropy", "linear_logprobs"]
