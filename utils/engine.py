"""The training engine: train one epoch with SAM, evaluate the base branch."""
import sys
import time
from contextlib import nullcontext

import torch
from tqdm import tqdm

from models import group_loss, group_targets

from .distributed import all_reduce_sum, gather_objects, is_main_process


class DeviceUnavailable(ValueError):
    """`--device cuda` on a machine without CUDA."""


def resolve_device(name):
    """`"auto"` → CUDA when available, else CPU; `"cuda"` without CUDA raises `DeviceUnavailable`."""
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("--device cuda was requested but CUDA is not available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


class NonFiniteLoss(RuntimeError):
    """Raised instead of training on a NaN/inf loss; the message names step and images."""


def autocast(device, enabled):
    """bf16 autocast on CUDA when `enabled` (the `--amp` option); nothing otherwise."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def progress(iterable, total, description):
    quiet = not (is_main_process() and sys.stderr.isatty())
    return tqdm(iterable, total=total, desc=description, disable=quiet, leave=False, dynamic_ncols=True)


def to_device(images, device, channels_last):
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return [x.to(device, non_blocking=True, memory_format=memory_format) for x in images]


def train_one_epoch(model, loader, optimizer, device, epoch, loss_options=None, amp=False,
                    channels_last=False, image_names=None, should_stop=lambda: False,
                    total_steps=None, first_step=0):
    """One epoch of SAM steps over the group loader.

    Returns a dict: `steps` done (counting `first_step` skipped ones), `loss` and
    `branch_losses` (epoch means, each output's cross-entropy in SPEC §3 order), `train_acc`
    (base-branch accuracy over all branches, %), `interrupted`.
    """
    model.train()
    loss_options = loss_options or {}
    sums = None
    correct = torch.zeros((), device=device)
    seen = 0
    step = first_step
    bar = progress(loader, total_steps, f"epoch {epoch + 1}")
    for images, y, y_n, indices in bar:
        images = to_device(images, device, channels_last)
        y, y_n = y.to(device, non_blocking=True), y_n.to(device, non_blocking=True)
        with autocast(device, amp):
            outputs = model(*images)
            loss, per_output = group_loss(outputs, y, y_n, **loss_options)
        _check_finite(loss, step, indices, image_names)
        loss.backward()
        optimizer.first_step()
        with autocast(device, amp):
            second_loss, _ = group_loss(model(*images), y, y_n, **loss_options)
        _check_finite(second_loss, step, indices, image_names, where="at the SAM ascent point")
        second_loss.backward()
        optimizer.second_step()

        batch = y.shape[0]
        sums = per_output.detach() * batch if sums is None else sums + per_output.detach() * batch
        num_branches = len(outputs) // 2
        targets = group_targets(y, y_n, num_branches)
        correct += sum((o.argmax(1) == t).sum() for o, t in zip(outputs[:num_branches], targets))
        seen += batch
        step += 1
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if should_stop():
            break
    return _epoch_metrics(sums, correct, seen, step, interrupted=should_stop(), device=device)


def _check_finite(loss, step, indices, image_names, where=""):
    if torch.isfinite(loss).item():
        return
    names = indices.flatten().tolist()
    if image_names is not None:
        names = [image_names[i] for i in names]
    raise NonFiniteLoss(f"loss is {loss.item()} {where} at step {step}; images of the batch: "
                        + ", ".join(map(str, names[:64])))


def _epoch_metrics(sums, correct, seen, steps, interrupted, device):
    totals = torch.zeros(2, device=device)
    totals[0], totals[1] = correct, seen
    all_reduce_sum(totals)
    if sums is not None:
        sums = all_reduce_sum(sums.float().clone())
    count = max(totals[1].item(), 1)
    branch_losses = [] if sums is None else (sums / count).tolist()
    num_branches = len(branch_losses) // 2
    return dict(steps=steps, interrupted=interrupted,
                loss=sum(branch_losses) / max(len(branch_losses), 1),
                branch_losses=branch_losses,
                train_acc=100.0 * totals[0].item() / max(count * max(num_branches, 1), 1))


@torch.inference_mode()
def evaluate(model, loader, device, num_classes, amp=False, channels_last=False, keep_logits=False):
    """Base-branch evaluation over a loader of `(image, label, index)`.

    Returns a dict with `acc` and `mean_class_acc` (%), the `confusion` matrix (rows: true
    labels) and, with `keep_logits`, `logits` as `{index: logits list}` gathered from all ranks.
    """
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    kept = {}
    for images, labels, indices in progress(loader, len(loader), "evaluate"):
        (images,) = to_device([images], device, channels_last)
        labels = labels.to(device)
        with autocast(device, amp):
            logits = model(images).float()
        confusion += torch.bincount(labels * num_classes + logits.argmax(1),
                                    minlength=num_classes ** 2).view(num_classes, num_classes)
        if keep_logits:
            kept.update(zip(indices.tolist(), logits.cpu().tolist()))
    confusion = all_reduce_sum(confusion).cpu()
    result = dict(confusion=confusion, **accuracy_metrics(confusion))
    if keep_logits:
        result["logits"] = {i: v for part in gather_objects(kept) for i, v in part.items()}
    return result


def accuracy_metrics(confusion):
    """Overall and mean per-class accuracy (%) of a confusion matrix; classes without samples skipped."""
    per_class_total = confusion.sum(1)
    present = per_class_total > 0
    per_class = confusion.diag()[present].double() / per_class_total[present]
    total = confusion.sum().item()
    return dict(acc=100.0 * confusion.diag().sum().item() / max(total, 1),
                mean_class_acc=100.0 * per_class.mean().item() if present.any() else 0.0)


class timer:
    """`with timer() as t: ...; t.seconds`."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
