"""Gate optimizers: the default keeps each gate's step proportional to its gradient, and resumes exactly."""

from __future__ import annotations

import pytest
import torch

from dnas_prune.errors import DnasPruneError
from dnas_prune.search.gate_optimizer import SharedScaleAdam, make_gate_optimizer


def test_steps_stay_proportional_to_gradients_unlike_per_parameter_adam() -> None:
    grads = torch.tensor([0.01, 0.1, 1.0, -2.0])
    moved = {}
    for kind in ("shared_adam", "adam"):
        logits = torch.nn.Parameter(torch.zeros(4))
        opt = make_gate_optimizer(kind, [logits], lr=0.1)
        for _ in range(5):
            logits.grad = grads.clone()
            opt.step()
        moved[kind] = -logits.detach()
    torch.testing.assert_close(moved["shared_adam"] / moved["shared_adam"][2], grads / grads[2])
    # per-parameter Adam moves every gate by about the same amount whatever its gradient: a tie
    torch.testing.assert_close(moved["adam"].abs(), torch.full((4,), 0.5), rtol=0.02, atol=0.0)


def test_shared_scale_is_one_rms_over_all_gate_tensors() -> None:
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    opt = SharedScaleAdam([a, b], lr=1.0)
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 0.0, 4.0])
    opt.step()
    rms = (25.0 / 5) ** 0.5  # first step: bias-corrected m = g, v = mean(g^2)
    torch.testing.assert_close(a.detach(), torch.tensor([-3.0, 0.0]) / rms)
    torch.testing.assert_close(b.detach(), torch.tensor([0.0, 0.0, -4.0]) / rms)


def test_saved_and_reloaded_state_continues_exactly(tmp_path) -> None:
    def run(steps: int, resume_at: int | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        logits = torch.nn.Parameter(torch.zeros(6))
        opt = SharedScaleAdam([logits], lr=0.05)
        for i in range(steps):
            if i == resume_at:
                torch.save({"logits": logits.detach(), "opt": opt.state_dict()}, tmp_path / "state.pt")
                saved = torch.load(tmp_path / "state.pt", weights_only=True)
                logits = torch.nn.Parameter(saved["logits"].clone())
                opt = SharedScaleAdam([logits], lr=0.05)
                opt.load_state_dict(saved["opt"])
            logits.grad = torch.randn(6, generator=g) * (1.0 + i)  # a changing scale keeps the shared RMS moving
            opt.step()
        return logits.detach()

    torch.testing.assert_close(run(200, resume_at=77), run(200), rtol=0, atol=0)


def test_unknown_optimizer_is_refused() -> None:
    with pytest.raises(DnasPruneError, match="shared_adam"):
        make_gate_optimizer("lion", [torch.nn.Parameter(torch.zeros(1))], lr=0.1)
