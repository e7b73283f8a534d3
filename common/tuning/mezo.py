"""MeZO: zeroth-order SPSA fine-tuning with forward passes only (Malladi et al., NeurIPS 2023).

One step at step seed s (the random direction z is never stored; it is regenerated from its seed)::

    theta += eps * z;      l+ = L(theta)
    theta -= 2 * eps * z;  l- = L(theta)
    theta += eps * z                                    # restore
    g = (l+ - l-) / (2 * eps)                           # projected gradient
    theta -= lr * (g * z + weight_decay * theta)

z holds one tensor per parameter, each drawn with ``torch.randn`` from its own ``torch.Generator`` seeded
with :func:`z_seed` (run seed, step, parameter index): the same z on every rank and after a resume, and
only one parameter-sized buffer alive at a time. No ``.grad`` is ever allocated: peak memory is the
inference memory plus the largest parameter. Under DDP the closure must return the loss averaged over
ranks (every rank then takes the same step). A non-finite loss at theta + eps z or theta - eps z
refuses the step (``ConfigError``; theta restored, ``steps`` not advanced): a projected gradient from
it would be inf / nan or would move theta by lr * 1e30.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from common.errors import ConfigError

_MASK = (1 << 63) - 1


def z_seed(seed: int, step: int, index: int) -> int:
    """Generator seed of parameter ``index``'s direction at ``step`` of a run seeded ``seed``."""
    return (seed * 1_000_003 + step * 10_007 + index * 7_919 + 0x5EED) & _MASK


def direction(p: torch.Tensor, seed: int) -> torch.Tensor:
    """z for parameter ``p``: standard normal, ``p``'s shape, device and dtype, from ``seed``."""
    g = torch.Generator(device=p.device)
    g.manual_seed(seed)
    return torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype)


class MeZO:
    """Zeroth-order SPSA optimizer over ``params`` (tensors; typically a trainable set's parameters).

    ``step(closure)``: ``closure()`` runs a forward pass and returns the loss (tensor or float); it is
    called twice under ``torch.no_grad``. Returns the loss at theta + eps z. State (``steps``,
    ``last_grad``) is in :meth:`state_dict` for exact resume.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float, eps: float = 1e-3, seed: int = 0,
                 weight_decay: float = 0.0):
        self.params = [p for p in params]
        if not self.params:
            raise ConfigError("mezo: no parameters to tune")
        if lr <= 0 or eps <= 0:
            raise ConfigError(f"mezo: lr and eps must be > 0, got lr={lr} eps={eps}")
        self.lr, self.eps, self.seed = float(lr), float(eps), int(seed)
        self.weight_decay = float(weight_decay)
        self.steps = 0
        self.last_grad: float | None = None

    @torch.no_grad()
    def _perturb(self, scale: float) -> None:
        for i, p in enumerate(self.params):
            p.add_(direction(p, z_seed(self.seed, self.steps, i)), alpha=scale)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor | float]) -> float:
        self._perturb(self.eps)
        loss_plus = float(closure())
        self._perturb(-2.0 * self.eps)
        loss_minus = float(closure())
        self._perturb(self.eps)
        for sign, value in (("+", loss_plus), ("-", loss_minus)):
            if not math.isfinite(value):  # refuse the step: theta is restored, nothing is updated
                raise ConfigError(f"mezo: the loss at theta {sign} eps z is {value} at step {self.steps} "
                                  f"(eps {self.eps:g}); no step taken: the model's output is not finite "
                                  f"that close to theta (lower tune.mezo_eps or check the features)")
        g = (loss_plus - loss_minus) / (2.0 * self.eps)
        for i, p in enumerate(self.params):
            z = direction(p, z_seed(self.seed, self.steps, i))
            if self.weight_decay:
                p.mul_(1.0 - self.lr * self.weight_decay)
            p.add_(z, alpha=-self.lr * g)
        self.last_grad = g
        self.steps += 1
        return loss_plus

    def state_dict(self) -> dict:
        return {"steps": self.steps, "seed": self.seed, "lr": self.lr, "eps": self.eps,
                "weight_decay": self.weight_decay, "last_grad": self.last_grad}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.seed = int(state["steps"]), int(state["seed"])
        self.lr, self.eps = float(state["lr"]), float(state["eps"])
        self.weight_decay = float(state["weight_decay"])
        self.last_grad = state.get("last_grad")
