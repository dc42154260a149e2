"""Learnable gates: one vector of open/closed decisions over a block or a group of channels.

Every kind shares one contract so the supernet, the budget and finalization never care which is used:

- ``probability()``: P(open) per gate, differentiable; what the expected cost is made of.
- ``forward()``: the value multiplied into the network. In training it is stochastic or soft with a
  straight-through gradient; in eval it is deterministic: exactly 0 when closed, ``open_value()`` when open.
- ``hard_open()``: the eval decision, which is what finalization keeps.
- ``forced``: decisions pinned by the user or by the budget projection (-1 = free, 0 = closed, 1 = open).
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor, nn

from ..errors import DnasPruneError

GATE_KINDS = ("sigmoid", "bernoulli", "hard_concrete")


class Gate(nn.Module, abc.ABC):
    """Base gate vector. Subclasses define the distribution; this class handles pinning and eval values."""

    kind: str = ""
    threshold: float = 0.0  # the shifted logit above which eval opens a gate: what the budget's offset aims at

    def __init__(self, size: int, init_logit: float = 3.0) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.full((size,), float(init_logit)))
        self.register_buffer("forced", torch.full((size,), -1, dtype=torch.int8))
        # the schedule, as tensors (set by Supernet.set_schedule): a Python float read in forward is a constant to
        # torch.compile, which compiles the gates again when it changes
        self.register_buffer("temperature", torch.ones(()), persistent=False)
        # one shift of every logit, solved by the budget each step (see budget.solve_offset)
        self.register_buffer("offset", torch.zeros(()), persistent=False)
        self.hard = False

    @property
    def size(self) -> int:
        return self.logits.numel()

    def shifted(self) -> Tensor:
        """The logits plus the budget's offset: what every decision and probability is made of."""
        return self.logits + self.offset

    def _shifted_exactly(self) -> Tensor:
        """:meth:`shifted` in float64, for decisions: the budget puts the offset halfway between two logits, which
        float32 cannot hold when they are one ulp apart (logits tie that closely): rounded, both units fell on one
        side and the hard state lost a unit the budget had counted."""
        return self.logits.detach().double() + self.offset.double()

    @abc.abstractmethod
    def probability(self) -> Tensor: ...

    @abc.abstractmethod
    def _sample(self) -> Tensor: ...

    @abc.abstractmethod
    def _free_open(self) -> Tensor: ...

    def open_value(self) -> Tensor:
        """The deterministic eval value of an open gate (1 for sigmoid/Bernoulli)."""
        return torch.ones_like(self.logits)

    def _pin(self, value: Tensor, pinned_open: Tensor) -> Tensor:
        forced = self.forced
        if bool((forced < 0).all()):
            return value
        return torch.where(forced == 0, torch.zeros_like(value), torch.where(forced == 1, pinned_open, value))

    def _pinned_open_value(self) -> Tensor:
        value = self.open_value().detach()
        return torch.where(value > 0, value, torch.ones_like(value))

    def hard_open(self) -> Tensor:
        """Bool decision per gate as eval mode (and finalization) sees it."""
        free = self._free_open()
        return torch.where(self.forced >= 0, self.forced == 1, free)

    def expected_open(self) -> Tensor:
        """P(open) with pinned gates at exactly 0 or 1: what the soft cost is made of."""
        return self._pin(self.probability(), torch.ones_like(self.logits))

    def forward(self) -> Tensor:
        if self.training:
            return self._pin(self._sample(), self._pinned_open_value())
        value = torch.where(self._free_open(), self.open_value(), torch.zeros_like(self.logits))
        return self._pin(value, self._pinned_open_value())

    def eval_value(self) -> Tensor:
        """The eval-mode value, whatever mode the module is in (used by finalization)."""
        was_training = self.training
        self.train(False)
        try:
            return self.forward().detach()
        finally:
            self.train(was_training)

    def score(self) -> Tensor:
        """How strongly each gate wants to be open; the budget keeps the highest.

        The logit, not P(open): P(open) is monotone in it for every kind, but at the end of the search
        (temperature 0.05) the sigmoid rounds every logit above 1 to exactly 1.0, which would leave the
        projection choosing among open channels by index.
        """
        return self.logits.detach()


class SigmoidGate(Gate):
    """``sigmoid((logit + offset) / T)``. Under the Pruner the forward is hard (0/1) with a straight-through
    gradient through this sigmoid, so training sees exactly what eval computes; T narrows the window of logits
    that still get a gradient as the search settles."""

    kind = "sigmoid"

    def probability(self) -> Tensor:
        return torch.sigmoid(self.shifted() / self.temperature)

    def _sample(self) -> Tensor:
        soft = self.probability()
        if not self.hard:
            return soft
        return self._free_open().to(soft.dtype) + soft - soft.detach()

    def _free_open(self) -> Tensor:
        return self._shifted_exactly() > 0


class BernoulliGate(Gate):
    """BPCP's gate: a Bernoulli sample with P(open) = sigmoid(logit), straight-through gradient."""

    kind = "bernoulli"

    def probability(self) -> Tensor:
        return torch.sigmoid(self.shifted())

    def _sample(self) -> Tensor:
        p = self.probability()
        return torch.bernoulli(p.detach()) + p - p.detach()

    def _free_open(self) -> Tensor:
        return self._shifted_exactly() > 0


class HardConcreteGate(Gate):
    """Louizos et al. 2018 hard-concrete (L0) gate: a stretched, clipped relaxed Bernoulli.

    Its eval value lies in [0, 1]; open values below 1 are folded into the weights at finalization.
    """

    kind = "hard_concrete"
    beta = 2.0 / 3.0
    gamma = -0.1
    zeta = 1.1
    threshold = math.log(-gamma / zeta)  # open while the stretched sigmoid clears 0, not at logit 0

    def probability(self) -> Tensor:
        return torch.sigmoid(self.shifted() - self.beta * math.log(-self.gamma / self.zeta))

    def _stretch(self, s: Tensor) -> Tensor:
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def _sample(self) -> Tensor:
        u = torch.rand_like(self.logits).clamp(1e-6, 1.0 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.shifted()) / self.beta)
        return self._stretch(s)

    def open_value(self) -> Tensor:
        return self._stretch(torch.sigmoid(self.shifted()))

    def _free_open(self) -> Tensor:
        return self.open_value().detach() > 0


_KINDS: dict[str, type[Gate]] = {"sigmoid": SigmoidGate, "bernoulli": BernoulliGate, "hard_concrete": HardConcreteGate}


def gate_threshold(kind: str) -> float:
    """The shifted logit at which a gate of ``kind`` opens in eval (see :attr:`Gate.threshold`)."""
    return _KINDS[kind].threshold


def make_gate(kind: str, size: int, init_logit: float = 3.0) -> Gate:
    if kind not in _KINDS:
        raise DnasPruneError(f"unknown gate kind {kind!r}; choose one of {', '.join(GATE_KINDS)}")
    return _KINDS[kind](size, init_logit)
