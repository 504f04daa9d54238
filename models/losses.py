"""The group loss, with the optional distillation terms of the ablations."""
import torch
import torch.nn.functional as F


def group_targets(y, y_n, num_outputs):
    """Targets in output order: QCS `(y, y, y_n, y_n)` twice, DCS `(y, y)` twice, baseline `(y,)`."""
    if num_outputs == 1:
        return (y,)
    num_branches = num_outputs // 2
    per_branch = (y, y, y_n, y_n) if num_branches == 4 else (y,) * num_branches
    return per_branch * 2


def group_loss(outputs, y, y_n, distill="none", distill_weight=1.0, temperature=1.0):
    """`(loss, per_output_losses)`: mean of the cross-entropies of all outputs.

    `outputs` holds the base logits of each branch, then the cross logits of each (a single
    base output for the baseline). `distill` = "kl" or "mse" adds, per branch, a term pulling
    the base logits towards the (detached) cross logits: KL at `temperature` (scaled by T²)
    or the mean squared error.
    """
    targets = group_targets(y, y_n, len(outputs))
    losses = torch.stack([F.cross_entropy(o, t) for o, t in zip(outputs, targets)])
    loss = losses.mean()
    if distill != "none" and len(outputs) > 1:
        num_branches = len(outputs) // 2
        pairs = zip(outputs[:num_branches], outputs[num_branches:])
        loss = loss + distill_weight * torch.stack(
            [_distill_term(b, c.detach(), distill, temperature) for b, c in pairs]).mean()
    return loss, losses


def _distill_term(base_logits, cross_logits, kind, temperature):
    if kind == "mse":
        return F.mse_loss(base_logits, cross_logits)
    if kind != "kl":
        raise ValueError(f"unknown distill {kind!r}; choose none, kl or mse")
    return F.kl_div(F.log_softmax(base_logits / temperature, dim=1),
                    F.log_softmax(cross_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True) * temperature ** 2
