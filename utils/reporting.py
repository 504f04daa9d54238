"""What a run leaves behind besides its checkpoints: the text log, the per-epoch metrics CSV, the loss
curves, the confusion matrix figure and, with `--tensorboard`, TensorBoard's event files."""
import contextlib
import csv
import logging
import os
import sys
from pathlib import Path

import matplotlib

from data_preprocessing.outputs import atomic_write, open_for_append, printable, refuse_link

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def make_logger(run_dir=None, enabled=True):
    """A new logger printing to stdout, and to `run_dir/log.txt` when `run_dir` is given (see
    `log_into`). File names that are not UTF-8 are written with escapes (\\xff). The logger is
    an object of its own, handed to whatever logs, not one from the process-wide registry."""
    logger = logging.Logger("qcs")
    logger.addHandler(_formatted(QuietStreamHandler(sys.stdout)))
    log_into(logger, run_dir, enabled)
    return logger


def log_into(logger, run_dir, enabled=True):
    """Let `logger` also append to `run_dir/log.txt` (never through a symbolic link; no file for
    `run_dir` None); `enabled` False (ranks after the first) keeps its warnings and errors only."""
    if run_dir is not None and enabled:  # a refusal to open it is still logged to stdout
        logger.addHandler(_formatted(logging.StreamHandler(open_for_append(Path(run_dir) / "log.txt"))))
    logger.setLevel(logging.INFO if enabled else logging.WARNING)


def _formatted(handler):
    handler.setFormatter(PrintableFormatter("%(asctime)s %(message)s", "%H:%M:%S"))
    return handler


class PrintableFormatter(logging.Formatter):
    """Log lines as text any UTF-8 stream takes (see `printable`)."""

    def format(self, record):
        return printable(super().format(record))


class QuietStreamHandler(logging.StreamHandler):
    """A console handler that falls silent when its stream goes away (a closed pipe, `| head`)
    instead of printing a logging traceback for every later line."""

    def handleError(self, record):
        if not isinstance(sys.exc_info()[1], (OSError, ValueError)):  # BrokenPipeError, or a closed file
            super().handleError(record)
            return
        with contextlib.suppress(OSError, ValueError):  # also what the stream still buffers, at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        self.stream = open(os.devnull, "w")


def loss_columns(num_branches):
    """Names of the per-output losses in output order: base of each branch, then cross of each
    (the baseline, one branch without a cross module, has `loss_base_1` alone)."""
    names = [f"loss_base_{i}" for i in range(1, num_branches + 1)]
    if num_branches > 1:
        names += [f"loss_cross_{i}" for i in range(1, num_branches + 1)]
    return names


def epoch_row(epoch, lr, metrics, result, state, seconds, num_branches):
    """One `metrics.csv` row: epoch (1-based), training sums, test scores and per-output losses."""
    losses = metrics["output_losses"]
    row = dict(epoch=epoch + 1, lr=lr, loss=metrics["loss"], train_acc=metrics["train_acc"],
               test_acc=result["acc"], mean_class_acc=result["mean_class_acc"],
               macro_f1=result["macro_f1"], best_acc=state.best_acc, epoch_time_s=round(seconds, 2))
    for i, name in enumerate(loss_columns(num_branches)):
        row[name] = losses[i] if losses else float("nan")
    return row


def write_metrics(path, history, num_branches):
    """Rewrite the metrics CSV from the run history (one row per epoch)."""
    columns = ["epoch", "lr", *loss_columns(num_branches), "loss", "train_acc", "test_acc", "mean_class_acc",
               "macro_f1", "best_acc", "epoch_time_s"]
    columns += [k for k in (history[0] if history else {}) if k not in columns]  # extra test splits

    def write(handle):
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)

    atomic_write(path, write, mode="w")


def save_figure(fig, path):
    """Write `fig` as a PNG atomically and close it."""
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    plt.close(fig)


def plot_losses(path, history, num_branches):
    """Base vs cross branch losses, and test accuracy, per epoch."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for name in loss_columns(num_branches):
        kind, branch = name.split("_")[1:]
        ax_loss.plot(epochs, [row[name] for row in history], "-" if kind == "base" else "--",
                     label=f"{kind} {branch}")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="branch losses")
    ax_loss.legend(fontsize=8, ncol=2)
    ax_acc.plot(epochs, [row["train_acc"] for row in history], label="train (base)")
    ax_acc.plot(epochs, [row["test_acc"] for row in history], label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax_acc.legend()
    fig.tight_layout()
    save_figure(fig, path)


def confusion_figure(confusion, class_names, title):
    """Row-normalised confusion matrix with the dataset's class names, as a matplotlib figure."""
    import seaborn as sns

    counts = confusion.double()
    rates = counts / counts.sum(1, keepdim=True).clamp(min=1)
    size = 1.0 + 0.8 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    labels = [printable(name) for name in class_names]  # a name that is not UTF-8 cannot be drawn
    sns.heatmap(rates.numpy(), annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1, ax=ax,
                xticklabels=labels, yticklabels=labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    return fig


def plot_confusion(path, confusion, class_names, title):
    """Write the row-normalised confusion matrix figure as a PNG."""
    save_figure(confusion_figure(confusion, class_names, title), path)


class TensorBoardLog:
    """`--tensorboard`: the run's per-epoch scalars, the confusion matrix at each new best and its
    hyperparameters, in `<run folder>/tensorboard/` (`tensorboard --logdir <run folder>`)."""

    def __init__(self, run_dir, settings):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        folder = Path(run_dir) / "tensorboard"
        refuse_link(folder)
        self.writer = SummaryWriter(str(folder))
        self.hyperparameters = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                for k, v in settings.as_dict().items() if v is not None}
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(self.hyperparameters.items())))

    def log_epoch(self, row):
        """Every number of a `metrics.csv` row, under its column name, at its epoch."""
        for name, value in row.items():
            if name != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(name, value, row["epoch"])
        self.writer.flush()

    def close(self, history):
        """The hyperparameters with the run's final figures, for TensorBoard's HPARAMS view."""
        if history:
            final = {"hparam/best_acc": max(row["test_acc"] for row in history),
                     "hparam/final_acc": history[-1]["test_acc"]}
            self.writer.add_hparams(self.hyperparameters, final, run_name=".")
        self.writer.close()


class RunReport:
    """The files a run rewrites after each epoch's `last.pth` (rank 0 only): `metrics.csv`, then
    `confusion_best.png` on a new best and `losses.png` and, with `--tensorboard`, its event files."""

    def __init__(self, run_dir, settings, classes, logger, enabled=True):
        self.run_dir, self.settings, self.classes, self.enabled = run_dir, settings, classes, enabled
        self.logger = logger
        self.tensorboard = TensorBoardLog(run_dir, settings) if enabled and settings.tensorboard else None

    def epoch(self, state, num_branches, confusion=None, tensorboard=True):
        """The metrics CSV, then the figures: the confusion matrix when `confusion` is given (a new
        best) and the loss curves. A figure that cannot be made is a warning, not a failure: it
        only shows what metrics.csv holds."""
        if not self.enabled:
            return
        write_metrics(self.run_dir / "metrics.csv", state.history, num_branches)
        title = (f"{self.settings.arch.upper()} {self.settings.dataset}, epoch {state.best_epoch}: "
                 f"{state.best_acc:.2f}%")
        if confusion is not None:
            self._figure("confusion_best.png",
                         lambda: plot_confusion(self.run_dir / "confusion_best.png", confusion, self.classes, title))
        self._figure("losses.png", lambda: plot_losses(self.run_dir / "losses.png", state.history, num_branches))
        if self.tensorboard and tensorboard:
            self.tensorboard.log_epoch(state.history[-1])
            if confusion is not None:
                self._figure("TensorBoard's confusion_best",
                             lambda: self.tensorboard.writer.add_figure(
                                 "confusion_best", confusion_figure(confusion, self.classes, title), state.best_epoch))

    def _figure(self, name, draw):
        try:
            draw()
        except Exception as error:  # noqa: BLE001 (matplotlib's errors have no common class)
            plt.close("all")
            reason = (str(error).strip().splitlines() or [""])[0]
            self.logger.warning(f"warning: {name} not written ({type(error).__name__}: "
                                f"{printable(reason)}); the numbers it shows are in metrics.csv")

    def close(self, history):
        """End of the run (also when it stops early): close the TensorBoard event file."""
        if self.tensorboard:
            self.tensorboard.close(history)


def format_confusion(confusion, class_names):
    """The confusion matrix as a text table (rows: true labels)."""
    width = max(7, max(len(n) for n in class_names) + 1)
    header = " " * width + "".join(n[:width - 1].rjust(width) for n in class_names)
    rows = [name.ljust(width) + "".join(str(v).rjust(width) for v in row)
            for name, row in zip(class_names, confusion.tolist())]
    return "\n".join([header, *rows])


def format_report(report):
    """A classification report (scikit-learn's dict form) as a text table."""
    classes = [k for k, v in report.items() if isinstance(v, dict) and not k.endswith(" avg")]
    width = max(12, max(len(k) for k in classes) + 2)
    lines = [" " * width + "precision    recall        F1   support"]
    for name in classes + ["macro avg"]:
        row = report[name]
        lines.append(f"{name:<{width}}{row['precision']:9.4f}{row['recall']:10.4f}{row['f1-score']:10.4f}"
                     f"{int(row['support']):10d}")
    return "\n".join(lines)
