"""The LM head's logit transform: raw logits ``a = h @ W.T + b`` to the logits ``z`` the softmax sees.

    z = softcap * tanh(logit_scale * a / softcap) / temperature      (softcap set, e.g. Gemma-2's 30.0)
    z = logit_scale * a / temperature                                (no softcap)

Its derivative is what every backward pass multiplies into ``dL/dz``:

    dz/da = (logit_scale / temperature) * (1 - tanh(logit_scale * a / softcap) ** 2)

Since ``tanh(logit_scale * a / softcap) = z * temperature / softcap``, the derivative can be recovered from ``z``
alone, so kernels never have to keep raw logits around.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LogitTransform:
    """Softcap, scale and temperature of an LM head (all identity by default)."""

    softcap: float | None = None
    logit_scale: float = 1.0
    temperature: float = 1.0

    def __post_init__(self):
        for name in ("logit_scale", "temperature"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if self.softcap is not None and not (math.isfinite(self.softcap) and self.softcap > 0):
            raise ValueError(f"softcap must be None or a positive finite number, got {self.softcap!r}")

    @property
    def slope(self) -> float:
        """dz/da at a = 0 (and everywhere when there is no softcap)."""
        return self.logit_scale / self.temperature

    @property
    def is_identity(self) -> bool:
        return self.softcap is None and self.slope == 1.0

    def apply(self, raw: torch.Tensor) -> torch.Tensor:
        """Turn raw logits into softmax logits, out of place (autograd-friendly). ``raw`` [..., V]."""
        if self.softcap is not None:
            return torch.tanh(raw * (self.logit_scale / self.softcap)) * (self.softcap / self.temperature)
        return raw * self.slope

    def apply_(self, raw: torch.Tensor) -> torch.Tensor:
        """Turn raw logits into softmax logits, in place. ``raw`` [..., V] float32/float64."""
        if self.softcap is not None:
            return raw.mul_(self.logit_scale / self.softcap).tanh_().mul_(self.softcap / self.temperature)
        if self.slope != 1.0:
            return raw.mul_(self.slope)
        return raw

    def derivative(self, logits: torch.Tensor) -> torch.Tensor | float:
        """dz/da expressed through the transformed logits ``z`` (a float when it is constant)."""
        if self.softcap is None:
            return self.slope
        t = logits * (self.temperature / self.softcap)
        return self.slope * (1.0 - t * t)

    def derivative_(self, logits: torch.Tensor) -> torch.Tensor:
        """In-place :meth:`derivative` of a tensor of transformed logits (softcap only)."""
        assert self.softcap is not None
        t = logits.mul_(self.temperature / self.softcap)
        return t.mul_(t).neg_().add_(1.0).mul_(self.slope)
