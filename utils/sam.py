"""Sharpness-Aware Minimisation around a base optimiser (models/METHOD.md §5)."""
import torch


class SAM(torch.optim.Optimizer):
    """Non-adaptive SAM: ascend to `w + ρ·g/‖g‖`, take the gradient there, restore `w`, step.

    Use: loss.backward(); `first_step()`; second forward+backward; `second_step()`.
    """

    def __init__(self, params, base_optimizer_cls, rho=0.05, **base_kwargs):
        if rho < 0:  # a negative radius would step down the loss instead of up: a silent wrong result
            raise ValueError(f"rho must be ≥ 0, got {rho}")
        super().__init__(params, dict(rho=rho, **base_kwargs))
        self.base_optimizer = base_optimizer_cls(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self):
        norms = [p.grad.norm(p=2) for group in self.param_groups for p in group["params"] if p.grad is not None]
        grad_norm = torch.norm(torch.stack([n.to(norms[0].device) for n in norms]), p=2)
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = p.grad * scale.to(p)
                p.add_(e_w)
                self.state[p]["e_w"] = e_w
        self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if "e_w" in self.state[p]:
                    p.sub_(self.state[p].pop("e_w"))
        self.base_optimizer.step()
        self.zero_grad(set_to_none=True)

    def step(self, closure=None):
        raise RuntimeError("SAM needs two passes: call first_step() and second_step()")

    def state_dict(self):
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict):
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups  # loading replaced the group dicts
