"""An optional linear learning-rate warm-up on top of the epoch schedule (ExponentialLR, as released)."""
from contextlib import contextmanager


class LinearWarmup:
    """Linear warm-up over the first `warmup_steps` steps of a run (`--warmup-epochs`).

    Step `s` (0-based, counted over the whole run) trains with `min(1, (s + 1) / warmup_steps)`
    times the learning rate the epoch schedule gives; the schedule itself is left untouched, so
    the rates after the warm-up, the saved optimiser state and a resumed run are as without it.
    """

    def __init__(self, optimizer, warmup_steps):
        self.optimizer, self.warmup_steps = optimizer, warmup_steps

    def factor(self, step):
        """The learning-rate factor of run step `step`."""
        return min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0

    @contextmanager
    def scaled(self, step):
        """Within the block, every parameter group's rate is the factor of run step `step` times its own."""
        factor = self.factor(step)
        if factor == 1.0:
            yield
            return
        groups = self.optimizer.param_groups
        scheduled = [group["lr"] for group in groups]
        for group, lr in zip(groups, scheduled):
            group["lr"] = lr * factor
        try:
            yield
        finally:
            for group, lr in zip(groups, scheduled):
                group["lr"] = lr
