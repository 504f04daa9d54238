"""The group loss, with the optional distillation terms of the ablations (METHOD.md §3)."""
import torch
import torch.nn.functional as F

from .architectures import with_branches
from .options import DISTILL_CHOICES, TEMPERATURE_DISTILLS


def group_targets(y, y_n, num_outputs):
    """Targets in output order: QCS `(y, y, y_n, y_n)` twice, DCS `(y, y)` twice, baseline `(y,)`."""
    if num_outputs == 1:
        return (y,)
    return tuple({"y": y, "y_n": y_n}[t] for t in with_branches(num_outputs // 2).targets) * 2


def group_loss(outputs, y, y_n, distill="none", distill_weight=1.0, temperature=1.0):
    """`(loss, per_output_losses)`: mean of the cross-entropies of all outputs.

    `outputs` holds the base logits of each branch, then the cross logits of each (a single
    base output for the baseline). Any other `distill` than "none" adds `distill_weight` times
    the mean over the branches of `distill_loss(base logits, cross logits)`: the paper's Eq. 10
    (all classifiers' cross-entropies, plus the optional KL or L2/MSE term).
    """
    losses = torch.stack([F.cross_entropy(o, t) for o, t in zip(outputs, group_targets(y, y_n, len(outputs)))])
    loss = losses.mean()
    if distill != "none" and len(outputs) > 1:
        num_branches = len(outputs) // 2
        pairs = zip(outputs[:num_branches], outputs[num_branches:])
        loss = loss + distill_weight * torch.stack(
            [distill_loss(b, c, distill, temperature) for b, c in pairs]).mean()
    return loss, losses


def distill_loss(student, teacher, kind, temperature=1.0):
    """One branch's distillation term between B×K `student` (base) and `teacher` (cross) logits.

    - "kl" (released): `T² · KL(softmax(teacher/T) ‖ softmax(student/T))`, mean over the batch;
      the gradient reaches both logits.
    - "l2" (released): the Euclidean distance `sqrt(Σ (student − teacher)²) / B` over the whole
      batch; the gradient reaches both.
    - "kl-detached", "mse": the KL above, or the mean squared error, with the teacher detached.
    """
    if kind in ("kl-detached", "mse"):
        teacher = teacher.detach()
    if kind in TEMPERATURE_DISTILLS:
        return F.kl_div(F.log_softmax(student / temperature, dim=1), F.softmax(teacher / temperature, dim=1),
                        reduction="batchmean") * temperature ** 2
    if kind == "l2":
        # vector_norm: the same value as sqrt(sum), with a zero gradient (not NaN) at equal inputs
        return torch.linalg.vector_norm(student - teacher) / student.shape[0]
    if kind == "mse":
        return F.mse_loss(student, teacher)
    raise ValueError(f"unknown distill {kind!r}; choose one of {', '.join(DISTILL_CHOICES[1:])}")
