"""Several teachers as one: an nn.Module whose output a logit method can take as the
teacher's logits.

For classification it returns T * log(sum_i w_i softmax(z_i / T)): a softmax at
temperature T of that gives back exactly the weighted mean of the teachers' softened
probabilities (softmax(log p) = p when p sums to 1), so kd, dkd and dist need no
change and the teacher cache stores one tensor. For regression it is the weighted
mean of the outputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class TeacherEnsemble(nn.Module):
    def __init__(
        self, members: list[nn.Module], weights: list[float], temperature: float, regression: bool
    ):
        super().__init__()
        self.members = nn.ModuleList(members)
        total = sum(weights)
        self.weights = [w / total for w in weights]
        self.temperature, self.regression = temperature, regression

    def forward(self, x: Tensor) -> Tensor:
        outs = [m(x).float() for m in self.members]
        if self.regression:
            return sum(w * o for w, o in zip(self.weights, outs, strict=True))  # type: ignore[return-value]
        t = self.temperature
        # log of the weighted mean of probabilities, by log-sum-exp (no underflow)
        logs = torch.stack(
            [
                torch.log_softmax(o / t, dim=1) + math.log(w)
                for w, o in zip(self.weights, outs, strict=True)
            ]
        )
        return t * torch.logsumexp(logs, dim=0)
