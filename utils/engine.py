"""The training engine: train one epoch with SAM, evaluate the base branch."""
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from tqdm import tqdm

from models import group_loss

from .device import TestTimeModel, autocast, to_device
from .distributed import all_reduce_sum, gather_objects, is_main_process
from .metrics import EpochMeter, accuracy_metrics


class NonFiniteLoss(RuntimeError):
    """Raised instead of training on a NaN/inf loss; the message names step and images."""


def progress(iterable, total, description):
    quiet = not (is_main_process() and sys.stderr.isatty())
    return tqdm(iterable, total=total, desc=description, disable=quiet, leave=False, dynamic_ncols=True)


def sam_step(model, optimizer, images, y, y_n, loss_options=None, amp=False, check=None):
    """One SAM step on a batch of groups: loss and gradient at w, ascent to w + ρ·g/‖g‖, loss and
    gradient there, restore w, base-optimiser step. Returns `(outputs, loss, per_output_losses)`
    of the first pass. `check(loss, where)` may stop on a non-finite loss before its backward."""
    loss_options = loss_options or {}
    with autocast(y.device, amp):
        outputs = model_outputs(model, images)
        loss, per_output = group_loss(outputs, y, y_n, **loss_options)
    if check is not None:
        check(loss, "")
    loss.backward()
    optimizer.first_step()
    with autocast(y.device, amp):
        second_loss, _ = group_loss(model_outputs(model, images), y, y_n, **loss_options)
    if check is not None:
        check(second_loss, " at the SAM ascent point")
    second_loss.backward()
    optimizer.second_step()
    return outputs, loss, per_output


@dataclass
class StepSettings:
    """How every training step of a run is taken and logged."""
    loss_options: dict = field(default_factory=dict)  # group_loss's distill, distill_weight, temperature
    amp: bool = False
    channels_last: bool = False
    augment: Callable | None = None  # --device-augment: `augment(uint8 images, epoch, step)` on the device
    image_names: Sequence | None = None  # names the images of a step whose loss is not finite
    logger: object = None  # with `print_freq`: a progress line every `print_freq` steps
    print_freq: int = 0
    epochs: int = 1  # of the run, for the progress line's ETA
    images_per_step: int = 0  # over all processes, for the progress line's images/s


def train_one_epoch(model, loader, optimizer, device, epoch, settings, meter=None, after_step=None):
    """One epoch of SAM steps over the group loader.

    `meter` (an `EpochMeter`) accumulates the epoch's metrics; after a mid-epoch resume it holds
    those of the `meter.steps` steps already done, and the loader yields the rest. `after_step(step,
    meter)` runs after each step and returns True to end the epoch early. Returns `(steps, stopped)`:
    the steps done, counting the skipped ones, and whether `after_step` ended the epoch.
    """
    model.train()
    meter = meter if meter is not None else EpochMeter()
    step = meter.steps
    total_steps = step + len(loader)
    progress_log = ProgressLog(settings, epoch, total_steps, step, optimizer)
    bar = progress(loader, total_steps, f"epoch {epoch + 1}")
    for images, y, y_n, indices in bar:
        images = training_input(images, device, settings.channels_last, settings.augment, epoch, step)
        y, y_n = y.to(device, non_blocking=True), y_n.to(device, non_blocking=True)
        check = partial(check_step_loss, step=step, indices=indices, image_names=settings.image_names)
        outputs, loss, per_output = sam_step(model, optimizer, images, y, y_n, settings.loss_options,
                                             settings.amp, check)
        meter.update(outputs, per_output, loss, y, y_n)
        step += 1
        bar.set_postfix(loss=f"{loss.item():.4f}")
        progress_log(step, meter)
        if after_step is not None and after_step(step, meter):
            return step, True
    return step, False


def training_input(images, device, channels_last, augment=None, epoch=0, step=0):
    """A step's images on `device`; with `augment`, moved as uint8 and augmented there first."""
    if augment is None:
        return to_device(images, device, channels_last)
    return to_device(augment(to_device(images, device, False), epoch, step), device, channels_last)


def model_outputs(model, images):
    """The model's outputs on a group as a tuple (a single tensor for the baseline on one image)."""
    outputs = model(*images)
    return (outputs,) if isinstance(outputs, torch.Tensor) else outputs


def check_step_loss(loss, where, step, indices, image_names):
    """`sam_step`'s check: stop on a non-finite loss, naming the step and the batch's images."""
    agree_finite(loss, f"{where} at step {step}", indices, image_names)


def agree_finite(loss, where, indices, image_names):
    """Raise `NonFiniteLoss` on every rank as soon as the loss of any rank is NaN/inf.

    Deciding together keeps DDP ranks from waiting forever for one that stopped alone.
    """
    bad = torch.logical_not(torch.isfinite(loss.detach())).to(torch.float32).reshape(1)
    if not all_reduce_sum(bad).item():
        return
    names = indices.flatten().tolist()
    if image_names is not None:
        names = [image_names[i] for i in names]
    value = loss.item()
    own = f"loss is {value}" if not math.isfinite(value) else "the loss of another rank is not finite"
    raise NonFiniteLoss(f"{own}{where}; images of this rank's batch: " + ", ".join(map(str, names[:64])))


class ProgressLog:
    """Every `print_freq` steps: step/total, loss, images/s, learning rate, ETA of epoch and run.

    Written through the logger (so into log.txt too), unlike the terminal's progress bar.
    """

    def __init__(self, settings, epoch, total_steps, first_step, optimizer):
        self.logger, self.print_freq, self.epochs = settings.logger, settings.print_freq, settings.epochs
        self.epoch, self.total_steps, self.first_step = epoch, total_steps, first_step
        self.optimizer, self.images_per_step = optimizer, settings.images_per_step
        self.start = time.perf_counter()

    def __call__(self, step, meter):
        if self.logger is None or not self.print_freq or step % self.print_freq:
            return
        per_step = (time.perf_counter() - self.start) / max(step - self.first_step, 1)
        left_epoch = (self.total_steps - step) * per_step
        left_run = left_epoch + (self.epochs - self.epoch - 1) * self.total_steps * per_step
        loss = float(meter.loss_sum) / max(meter.anchors, 1)
        lr = self.optimizer.param_groups[0]["lr"]
        self.logger.info(f"epoch {self.epoch + 1}/{self.epochs}  step {step}/{self.total_steps}  "
                         f"loss {loss:.4f}  {self.images_per_step / per_step:.1f} images/s  lr {lr:.3g}  "
                         f"eta epoch {format_duration(left_epoch)}, run {format_duration(left_run)}")


def format_duration(seconds):
    """`1h02m`, `12m05s` or `42s`."""
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@torch.inference_mode()
def evaluate(model, loader, device, num_classes, amp=False, channels_last=False, keep_logits=False, tta="none"):
    """Base-branch evaluation over a loader of `(image, label, index)`.

    Returns a dict with `acc` and `mean_class_acc` (%), the `confusion` matrix (rows: true
    labels) and, with `keep_logits`, `logits` as `{index: logits list}` gathered from all ranks.
    `tta="flip"` scores each image by the mean of its logits and its horizontal mirror's.
    """
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    kept = {}
    scorer = TestTimeModel(model, tta=tta, amp=amp)
    for images, labels, indices in progress(loader, len(loader), "evaluate"):
        (images,) = to_device([images], device, channels_last)
        labels = labels.to(device)
        logits = scorer(images)
        confusion += torch.bincount(labels * num_classes + logits.argmax(1),
                                    minlength=num_classes ** 2).view(num_classes, num_classes)
        if keep_logits:
            kept.update(zip(indices.tolist(), logits.cpu().tolist()))
    confusion = all_reduce_sum(confusion).cpu()
    result = dict(confusion=confusion, **accuracy_metrics(confusion))
    if keep_logits:
        result["logits"] = {i: v for part in gather_objects(kept) for i, v in part.items()}
    return result
