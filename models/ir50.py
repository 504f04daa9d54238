"""IR50 backbone, first three stages (METHOD.md §1), with branch-grouped batch norm."""
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn


class BranchBatchNorm2d(nn.BatchNorm2d):
    """Per-branch batch norm: in training mode, its batch can be `num_groups` equal chunks (the branches).

    Each chunk is normalised with its own batch statistics and updates the running
    statistics in order, exactly as if the chunks had been passed through the layer
    one call at a time. This lets the branches of a DCS/QCS group share one backbone
    call without changing any result. With `update_running_stats = False` the
    running statistics are left untouched (used when activations are recomputed).
    """
    num_groups = 1
    update_running_stats = True

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        chunks = x.chunk(self.num_groups) if self.num_groups > 1 else (x,)
        if len(chunks) != self.num_groups:
            raise ValueError(f"batch of {x.shape[0]} cannot be split into {self.num_groups} branches")
        outputs = [self._train_norm(chunk) for chunk in chunks]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _train_norm(self, x):
        if self.update_running_stats:
            self.num_batches_tracked.add_(1)
            running_mean, running_var = self.running_mean, self.running_var
        else:  # throwaway copies keep the autograd graph identical to the first forward
            running_mean, running_var = self.running_mean.clone(), self.running_var.clone()
        return F.batch_norm(x, running_mean, running_var, self.weight, self.bias,
                            True, self.momentum, self.eps)


class BottleneckIR(nn.Module):
    """`res = BN → conv3×3 → PReLU → conv3×3(stride) → BN`, plus a (pooled or projected) shortcut."""

    def __init__(self, in_channels, depth, stride):
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), BranchBatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            BranchBatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            BranchBatchNorm2d(depth),
        )

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


def _stage(in_channels, depth, num_units):
    """`num_units` units, the first halving the resolution."""
    return nn.Sequential(BottleneckIR(in_channels, depth, 2),
                         *(BottleneckIR(depth, depth, 1) for _ in range(num_units - 1)))


class IR50Stages(nn.Module):
    """Stem and the first three IR50 stages, of `channels` channels and `units` units each (the
    paper's: (64, 128, 256) and (3, 4, 14)); returns the three stage outputs."""

    def __init__(self, channels, units, checkpoint_stages=False):
        super().__init__()
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, channels[0], 3, 1, 1, bias=False), BranchBatchNorm2d(channels[0]), nn.PReLU(channels[0]))
        in_channels = (channels[0],) + tuple(channels[:-1])
        self.body1, self.body2, self.body3 = (
            _stage(i, c, n) for i, c, n in zip(in_channels, channels, units))
        self.checkpoint_stages = checkpoint_stages

    def forward(self, x):
        x = self.input_layer(x)
        outputs = []
        for stage in (self.body1, self.body2, self.body3):
            x = self._run(stage, x)
            outputs.append(x)
        return outputs

    def _run(self, stage, x):
        if not (self.checkpoint_stages and self.training and torch.is_grad_enabled()):
            return stage(x)
        # Recomputation in backward runs after `branch_groups` has exited: restore the grouping,
        # and do not update the BN running statistics a second time.
        num_groups = self.input_layer[1].num_groups  # every BN has the same setting
        return torch.utils.checkpoint.checkpoint(
            stage, x, use_reentrant=False,
            context_fn=lambda: (nullcontext(), self.branch_groups(num_groups, update_running_stats=False)))

    @contextmanager
    def branch_groups(self, num_groups, update_running_stats=True):
        """Context in which each BN splits its training batch into `num_groups` branches (and
        updates its running statistics or not)."""
        norms = [m for m in self.modules() if isinstance(m, BranchBatchNorm2d)]
        for m in norms:
            m.num_groups, m.update_running_stats = num_groups, update_running_stats
        try:
            yield
        finally:
            for m in norms:
                m.num_groups, m.update_running_stats = 1, True
