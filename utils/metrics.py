"""Classification metrics: the epoch's running training sums and the test-set scores."""
import numpy as np
import torch
from sklearn.metrics import classification_report

from models import group_targets

from .distributed import all_reduce_sum


class EpochMeter:
    """Running sums of an epoch's training metrics, kept across a mid-epoch checkpoint.

    Sums are over anchors: each output's cross-entropy, the full loss (distillation included),
    and correct base-branch predictions over all branches. `steps` counts the epoch's steps,
    those before a mid-epoch resume included.
    """

    def __init__(self, state=None, steps=0):
        state = state or {}
        self.steps = steps
        self.output_loss_sums = state.get("output_loss_sums")
        self.loss_sum = state.get("loss_sum", 0.0)
        self.correct = state.get("correct", 0.0)
        self.anchors = state.get("anchors", 0.0)
        self.branches = state.get("branches", 1)

    def update(self, outputs, per_output, loss, y, y_n):
        """Add one step: its outputs, per-output losses and full loss, and its targets."""
        batch = y.shape[0]
        sums = per_output.detach().float() * batch
        if self.output_loss_sums is not None:
            sums = sums + torch.as_tensor(self.output_loss_sums, device=sums.device)
        self.output_loss_sums = sums
        self.loss_sum = loss.detach().float() * batch + self.loss_sum
        self.branches = max(len(outputs) // 2, 1)
        targets = group_targets(y, y_n, len(outputs))
        hits = sum((o.argmax(1) == t).sum() for o, t in zip(outputs[:self.branches], targets))
        self.correct = hits + self.correct
        self.anchors += batch
        self.steps += 1

    def local_state(self):
        """This rank's own sums, as plain numbers (a resume by as many ranks gives each its own back,
        so the sums add up in the same order as in a run that was not stopped)."""
        output_sums = None if self.output_loss_sums is None else torch.as_tensor(self.output_loss_sums).tolist()
        return dict(output_loss_sums=output_sums, loss_sum=float(self.loss_sum), correct=float(self.correct),
                    anchors=float(self.anchors), branches=self.branches)

    def global_state(self, device):
        """The sums over all ranks, as plain numbers (a collective under DDP: call on every rank)."""
        count = 0 if self.output_loss_sums is None else len(self.output_loss_sums)
        parts = (self.output_loss_sums if count else [], self.loss_sum, self.correct, self.anchors)
        totals = torch.cat([torch.as_tensor(part, device=device).double().reshape(-1) for part in parts])
        totals = all_reduce_sum(totals).tolist()
        return dict(output_loss_sums=totals[:count] or None, loss_sum=totals[count],
                    correct=totals[count + 1], anchors=totals[count + 2], branches=self.branches)

    def metrics(self, device):
        """Epoch means over all ranks: `loss`, `output_losses` (output order) and `train_acc` (%)."""
        state = self.global_state(device)
        anchors = max(state["anchors"], 1.0)
        return dict(loss=state["loss_sum"] / anchors,
                    output_losses=[v / anchors for v in state["output_loss_sums"] or []],
                    train_acc=100.0 * state["correct"] / (anchors * state["branches"]))


def accuracy_metrics(confusion):
    """Accuracy, mean per-class accuracy (classes without samples skipped) and macro-F1, in %."""
    per_class_total = confusion.sum(1)
    present = per_class_total > 0
    per_class = confusion.diag()[present].double() / per_class_total[present]
    total = confusion.sum().item()
    return dict(acc=100.0 * confusion.diag().sum().item() / max(total, 1),
                mean_class_acc=100.0 * per_class.mean().item() if present.any() else 0.0,
                macro_f1=100.0 * classification_summary(confusion)["macro avg"]["f1-score"])


def classification_summary(confusion, class_names=None):
    """scikit-learn's classification report (as a dict) of the predictions a confusion matrix counts.

    Covers the classes that occur as a label or a prediction; with `class_names`, keyed by name.
    """
    num_classes = confusion.shape[0]
    pairs = np.repeat(np.arange(num_classes * num_classes), confusion.flatten().numpy())
    y_true, y_pred = pairs // num_classes, pairs % num_classes
    labels = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    names = [class_names[k] for k in labels] if class_names is not None else [str(k) for k in labels]
    return classification_report(y_true, y_pred, labels=labels, target_names=names, output_dict=True,
                                 zero_division=0)
