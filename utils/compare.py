"""Baseline vs DCS vs QCS with the same data and budget, over several seeds.

    python -m utils.compare --dataset demo --seeds 3 [--budget epochs|images] [--out DIR] [-- TRAINING OPTIONS]

Everything after `--` goes to every training run (for example `--epochs 10 --size small`). The
baseline is the base branch alone (`main_QCS.py --baseline`, so QCS's recipe), DCS runs
`main_DCS.py`, QCS `main_QCS.py`.

`--budget epochs` (default): every run gets the `--epochs` given after `--`, or else its own
recipe's. `--budget images`: every model trains on as many images as QCS does in its epochs (the
`--epochs` given after `--`, or else QCS's recipe's): a QCS anchor brings 4 images, a DCS anchor 2,
a baseline anchor 1, so the baseline gets 4 times QCS's epochs and DCS 2 times (on AffectNet, whose
balanced sampler draws len//12 anchors per epoch for QCS and the baseline but len//8 for DCS, DCS
gets 4/3 times, rounded). Each run's own `--epochs` is appended after the passed options.

DIR (new) receives one run folder per model and seed, and:

- `summary.csv` / `summary.md`: mean ± std over the seeds of the best and the final test accuracy
  and mean class accuracy, and of every extra test split the dataset has (the demo's
  nuisance-flipped split), and the mean epoch time in seconds, which shows each model's cost; the
  budget and each model's epochs;
- `accuracy.png`: test accuracy per epoch, the mean with a band of ± one std, per model and split.
"""
import argparse
import csv
import json
import statistics
import sys
from fractions import Fraction
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from data_preprocessing import DATASET_NAMES  # noqa: E402
from data_preprocessing.outputs import (  # noqa: E402
    OutputError,
    atomic_write,
    atomic_write_text,
    check_output_dir,
    make_output_dir,
)
from models import ARCHS  # noqa: E402

from .config import UsageError, parse_args, resolve_config  # noqa: E402
from .train import main as train_main  # noqa: E402

MODELS = {"baseline": ("qcs", ["--baseline"]), "DCS": ("dcs", []), "QCS": ("qcs", [])}
BUDGETS = ("epochs", "images")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m utils.compare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--dataset", default="demo", choices=DATASET_NAMES)
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--budget", default="epochs", choices=BUDGETS,
                        help="equal epochs (each run's --epochs or recipe), or equal training images "
                             "(QCS's epochs, the others scaled; see below)")
    parser.add_argument("--out", help="new output folder (default log/compare-<dataset>)")
    return parser


def resolved_settings(model, dataset, passed):
    """The settings a run of `model` would resolve to (recipe filled in), without training."""
    script, extra = MODELS[model]
    return resolve_config(script, parse_args(script, ["--dataset", dataset, *extra, *passed]))


def images_per_epoch(settings):
    """Training images per epoch, per training image: branches × the share of images drawn as anchors."""
    anchors = Fraction(1, settings["anchor_divisor"]) if settings["balanced_sampler"] else Fraction(1)
    return ARCHS[settings["arch"]] * anchors


def planned_epochs(models, dataset, passed, budget):
    """`{model: epochs}` under `budget`: each run's own, or scaled to QCS's training images."""
    settings = {model: resolved_settings(model, dataset, passed) for model in models}
    if budget == "epochs":
        return {model: s["epochs"] for model, s in settings.items()}
    qcs = settings["QCS"] if "QCS" in settings else resolved_settings("QCS", dataset, passed)
    images = qcs["epochs"] * images_per_epoch(qcs)
    return {model: max(1, round(images / images_per_epoch(s))) for model, s in settings.items()}


def budget_note(budget, epochs):
    """One line saying what the models were given, e.g. `budget images (...): baseline 28, QCS 7 epochs`."""
    meaning = ("as many training images as QCS" if budget == "images"
               else "each run's --epochs, or its recipe's")
    counts = ", ".join(f"{model} {n}" for model, n in epochs.items())
    return f"budget {budget} ({meaning}): {counts} epochs"


def accuracy_columns(rows):
    """The per-epoch accuracy columns of a metrics.csv: `test_acc`, then extra splits' `*_acc`."""
    names = [k for k in rows[0] if k.endswith("_acc") and k not in ("train_acc", "best_acc",
                                                                      "mean_class_acc")]
    return sorted(names, key=lambda k: (k != "test_acc", k))


def read_metrics(run_dir):
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def mean_std(values):
    """`(mean, std)` over the seeds; std is None for a single seed."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def summarise(histories):
    """`{model: {measure: mean_std(...)}}` from `{model: [metrics rows of each seed]}`."""
    summary = {}
    for model, runs in histories.items():
        measures = {}
        for column in accuracy_columns(runs[0]) + ["mean_class_acc"]:
            measures[f"best {column}"] = [max(float(r[column]) for r in rows) for rows in runs]
            measures[f"final {column}"] = [float(rows[-1][column]) for rows in runs]
        measures["s/epoch"] = [statistics.mean(float(r["epoch_time_s"]) for r in rows) for rows in runs]
        summary[model] = {k: mean_std(v) for k, v in measures.items()}
    return summary


def write_summary(out, summary, seeds, budget="epochs", epochs=None):
    """Write `summary.csv` and `summary.md` into `out` (atomically); returns the Markdown table.

    `budget` and `epochs` (`{model: epochs}`, optional) say what every model was given.
    """
    measures = list(next(iter(summary.values())))
    epochs = epochs or {}

    def write_csv(handle):
        writer = csv.writer(handle)
        writer.writerow(["model", "seeds", "budget", "epochs"]
                        + [f"{m} {part}" for m in measures for part in ("mean", "std")])
        for model, values in summary.items():
            cells = ("" if v is None else f"{v:.4f}" for m in measures for v in values[m])
            writer.writerow([model, seeds, budget, epochs.get(model, ""), *cells])

    atomic_write(out / "summary.csv", write_csv, mode="w", flag="--out")
    lines = ["| model | " + " | ".join(measures) + " |", "|---" * (len(measures) + 1) + "|"]
    for model, values in summary.items():
        cells = (f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"
                 for mean, std in (values[m] for m in measures))
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    spread = "one seed" if seeds == 1 else f"mean ± std over {seeds} seeds"
    budget_line = budget_note(budget, epochs) if epochs else f"budget {budget}"
    text = "\n".join(lines) + f"\n\n(accuracies in %, s/epoch in seconds; {spread}; {budget_line})\n"
    atomic_write_text(text, out / "summary.md", flag="--out")
    return text


LINE_STYLES = ("o-", "s--", "^:")  # curves that coincide stay visible
MAX_EPOCH_TICKS = 30  # one tick per epoch up to this many; matplotlib's choice beyond


def plot_curves(path, histories, title, num_classes=None):
    """Test accuracy per epoch on a 0–100% axis, mean ± std band per model, chance dashed."""
    columns = accuracy_columns(next(iter(histories.values()))[0])
    fig, axes = plt.subplots(1, len(columns), figsize=(6 * len(columns), 4), squeeze=False)
    for ax, column in zip(axes[0], columns):
        if num_classes:
            ax.axhline(100 / num_classes, color="grey", linestyle="--", linewidth=1, label="chance")
        longest = 0
        for (model, runs), style in zip(histories.items(), LINE_STYLES):
            epochs = [int(r["epoch"]) for r in runs[0]]
            longest = max(longest, len(epochs))
            values = [[float(rows[i][column]) for rows in runs] for i in range(len(epochs))]
            mean, std = zip(*(mean_std(v) for v in values))
            std = [s or 0.0 for s in std]  # no band for a single seed
            ax.plot(epochs, mean, style, label=model)
            ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            alpha=0.2)
        ax.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100), title=f"{title}: {column.replace('_acc', '')}")
        if longest <= MAX_EPOCH_TICKS:  # runs may differ in length (--budget images)
            ax.set_xticks(range(1, longest + 1))
        ax.legend()
    fig.tight_layout()
    try:
        atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=100), flag="--out")
    finally:
        plt.close(fig)


def main(argv=None):
    """The command line; exit status 0, 2 for a usage or output error, else a failed training run's."""
    argv = list(sys.argv[1:] if argv is None else argv)
    passed = argv[argv.index("--") + 1:] if "--" in argv else []
    args = build_parser().parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.seeds < 1:
        print("error: --seeds must be at least 1", file=sys.stderr)
        return 2
    out = Path(args.out or f"log/compare-{args.dataset}")
    if out.is_dir() and any(out.iterdir()):
        print(f"error: --out {out} already holds files; choose a new folder", file=sys.stderr)
        return 2
    try:
        epochs = planned_epochs(args.models, args.dataset, passed, args.budget)
        make_output_dir(check_output_dir(out, "--out", create=True), "--out")
        return compare(args, out, passed, epochs)
    except (OutputError, UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def compare(args, out, passed, epochs):
    """Train every model and seed into `out` for its `epochs[model]`, then write the summary and the plot there."""
    note = budget_note(args.budget, epochs)
    print(note)
    histories = {}
    for model in args.models:
        script, extra = MODELS[model]
        budget = ["--epochs", str(epochs[model])] if args.budget == "images" else []  # the last --epochs wins
        for seed in range(args.seeds):
            run_dir = out / f"{model}-seed{seed}"
            code = train_main(script, ["--dataset", args.dataset, "--seed", str(seed), "--output-dir",
                                       str(run_dir), *extra, *passed, *budget])
            if code != 0:
                print(f"error: training {model} (seed {seed}) ended with exit code {code}", file=sys.stderr)
                return code
            histories.setdefault(model, []).append(read_metrics(run_dir))
    print(write_summary(out, summarise(histories), args.seeds, args.budget, epochs))
    num_classes = json.loads((run_dir / "config.json").read_text()).get("num_classes")
    plot_curves(out / "accuracy.png", histories, args.dataset, num_classes)
    print(f"wrote {out / 'summary.csv'}, {out / 'summary.md'} and {out / 'accuracy.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
