"""Input checks shared by the loss heads: one clear error per kind of bad input, raised before any math runs."""

import math
from collections.abc import Sequence

import torch


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Raise ValueError unless ``value`` is one of ``choices`` (the message lists them)."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")


def check_real(name: str, value, *, positive: bool = False, minimum: float | None = None) -> float:
    """Return ``value`` as a finite Python float; TypeError if it is not a real number, ValueError if out of range.

    ``positive`` asks for ``value > 0``; ``minimum`` for ``value >= minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number (int or float), got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_float_tensor(name: str, value) -> torch.Tensor:
    """TypeError unless ``value`` is a floating-point tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def per_sequence_float32(**named: torch.Tensor) -> list[torch.Tensor]:
    """Check per-sequence inputs and return them as float32, in the order given.

    Each value must be a floating-point tensor of shape [B] with the same B >= 1 and on the same device as the
    first. Casting to float32 is differentiable, so gradients reach inputs of any float dtype.
    """
    tensors = [check_float_tensor(name, value) for name, value in named.items()]
    first_name, first = next(iter(named)), tensors[0]
    for name, value in zip(named, tensors):
        if value.dim() != 1:
            raise ValueError(f"{name} must be 1-D [B] (one value per sequence), got shape {tuple(value.shape)}")
        if value.shape != first.shape:
            raise ValueError(f"{name} has shape {tuple(value.shape)} but {first_name} has shape {tuple(first.shape)}")
        if value.device != first.device:
            raise ValueError(f"{name} is on {value.device} but {first_name} is on {first.device}")
    if first.shape[0] == 0:
        raise ValueError(f"empty batch: {first_name} has no sequences")
    return [value.float() for value in tensors]


def scalar_float32(name: str, value, like: torch.Tensor) -> torch.Tensor:
    """A real number or a single-element float tensor -> a 0-dim float32 tensor on ``like.device``.

    ``None`` means 0. A tensor keeps its autograd graph (callers detach where the objective needs it).
    """
    if value is None:
        return like.new_zeros(())
    if isinstance(value, torch.Tensor):
        check_float_tensor(name, value)
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar (one element), got shape {tuple(value.shape)}")
        if value.device != like.device:
            raise ValueError(f"{name} is on {value.device} but the log-probs are on {like.device}")
        return value.float().reshape(())
    return like.new_tensor(check_real(name, value))


def lengths_float32(name: str, value, like: torch.Tensor) -> torch.Tensor:
    """Completion lengths (integer or float tensor [B], or None for all ones) -> float32 [B], clamped to >= 1.

    An empty completion (length 0) has summed log-prob 0, so its length-averaged log-prob is 0 for any divisor;
    the clamp makes that 0 / 1 instead of 0 / 0.
    """
    if value is None:
        return torch.ones_like(like)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token counts, got {type(value).__name__}")
    if value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{name} must be an integer or float tensor of token counts, got dtype {value.dtype}")
    if value.shape != like.shape:
        raise ValueError(f"{name} must have shape {tuple(like.shape)} (one count per pair), got {tuple(value.shape)}")
    if value.device != like.device:
        raise ValueError(f"{name} is on {value.device} but the log-probs are on {like.device}")
    return value.detach().float().clamp(min=1.0)
