"""Baseline vs DCS vs QCS with the same data and budget, over several seeds.

    python -m utils.tools.compare --dataset demo --seeds 3 [--first-seed 0] [--budget epochs|images] [--out DIR]
                            [-- TRAINING OPTIONS]
    python -m utils.tools.compare --merge DIR [DIR ...] --out NEW

Everything after `--` goes to every training run (for example `--epochs 10 --size small`), except
the options compare sets for each run itself, which are refused there: `--seed` (use `--first-seed`
and `--seeds`), `--output-dir` (`--out`), `--dataset`, `--baseline` (`--models`), `--resume`,
`--evaluate`, `--predictions` and `--config`. The
baseline is the base branch alone (`main_QCS.py --baseline`, so QCS's recipe), DCS runs
`main_DCS.py`, QCS `main_QCS.py`.

`--budget epochs` (default): every run gets the `--epochs` given after `--`, or else its own
recipe's. `--budget images`: every model trains on as many images as QCS does in its epochs (the
`--epochs` given after `--`, or else QCS's recipe's): a QCS anchor brings 4 images, a DCS anchor 2,
a baseline anchor 1, so the baseline gets 4 times QCS's epochs and DCS 2 times (on AffectNet, whose
balanced sampler draws len//12 anchors per epoch for QCS and the baseline but len//8 for DCS, DCS
gets 4/3 times, rounded). Each run's own `--epochs` is appended after the passed options.

DIR (new) receives one run folder per model and seed, trained seed by seed (every model of a seed
before the next seed), and, rewritten after each seed so that a stopped comparison keeps the seeds
it finished:

- `summary.csv` / `summary.md`: mean ± std over the seeds of the best and the final test accuracy
  and mean class accuracy, and of every extra test split the dataset has (the demo's
  nuisance-flipped split), and the mean epoch time in seconds, which shows each model's cost; the
  budget and each model's epochs;
- `accuracy.png`: test accuracy per epoch, the mean with a band of ± one std, per model and split
  (with `--budget images`, against the training images seen).

With `--select-on val` among the training options the summary adds `test at best val`, the test
accuracy at the epoch the validation split chose. `--merge` trains nothing: it writes the same
summary and plot for the finished seeds of several compare folders of the same models, budget and
epochs (for example one comparison's seeds run as several commands with `--first-seed`).
"""
import argparse
import csv
import math
import re
import statistics
import sys
from fractions import Fraction
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from data_preprocessing import DATASET_NAMES  # noqa: E402
from data_preprocessing.files import InputError, read_csv  # noqa: E402
from data_preprocessing.outputs import (  # noqa: E402
    OutputError,
    atomic_write,
    atomic_write_text,
    check_output_dir,
    make_output_dir,
)
from models.architectures import ARCHITECTURES, architecture, scripts  # noqa: E402

from ..config import UsageError, flag, given_options, parse_args, read_json_file, resolve_config  # noqa: E402
from ..settings import check  # noqa: E402
from ..train import main as train_main  # noqa: E402

# `{title: (training script, its options)}`; the baseline trains with QCS's script and recipe
MODELS = {ARCHITECTURES["base"].title: ("qcs", ["--baseline"]),
          **{ARCHITECTURES[name].title: (name, []) for name in scripts()}}
BUDGETS = ("epochs", "images")
# training options compare sets for each run itself: `{option: (why it is refused after --, what to use instead)}`
SET_PER_RUN = {
    "seed": ("compare gives each run its own seed", "--first-seed and --seeds"),
    "output_dir": ("compare puts each run in its own folder inside --out", "--out"),
    "dataset": ("compare gives every run its own --dataset", "compare's --dataset, before --"),
    "baseline": ("compare trains the baseline as one of --models", "--models"),
    "resume": ("compare starts new runs", "--first-seed for the missing seeds and a new --out, then --merge"),
    "evaluate": ("compare trains every run", "main_QCS.py / main_DCS.py --evaluate on a run's best.pth"),
    "predictions": ("compare trains every run", "main_QCS.py / main_DCS.py --evaluate on a run's best.pth"),
    "config": ("compare gives every run the options after --", "those options themselves after --"),
}
METRICS_NUMBERS = ("epoch", "mean_class_acc", "epoch_time_s")  # besides the accuracy columns


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m utils.tools.compare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--dataset", default="demo", choices=DATASET_NAMES)
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds are first-seed, first-seed + 1, ... (to split the seeds over several "
                             "commands, summarised together with --merge)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--budget", default="epochs", choices=BUDGETS,
                        help="equal epochs (each run's --epochs or recipe), or equal training images "
                             "(QCS's epochs, the others scaled; see below)")
    parser.add_argument("--out", help="new output folder (default log/compare-<dataset>)")
    parser.add_argument("--merge", nargs="+", metavar="DIR",
                        help="train nothing: summarise the finished seeds of these compare folders (same "
                             "models, budget and epochs) into --out")
    return parser


def refuse_options_set_per_run(passed):
    """UsageError naming the first training option after `--` that compare sets for each run itself
    (abbreviations and `--opt=value` included: the training parser reads them)."""
    given = given_options("qcs", passed)
    for option, (reason, instead) in SET_PER_RUN.items():
        if option in given:
            raise UsageError(f"{flag(option)} after -- is refused: {reason}; use {instead}")


def resolved_settings(model, dataset, passed):
    """The settings a run of `model` would resolve to (recipe filled in), without training."""
    script, extra = MODELS[model]
    return resolve_config(script, parse_args(script, ["--dataset", dataset, *extra, *passed]))


def images_per_epoch(settings):
    """Training images per epoch, per training image: branches × the share of images drawn as anchors."""
    anchors = Fraction(1, settings["anchor_divisor"]) if settings["balanced_sampler"] else Fraction(1)
    return architecture(settings["arch"]).branches * anchors


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
    names = [k for k in (rows[0] if rows else [])
             if k.endswith("_acc") and k not in ("train_acc", "best_acc", "mean_class_acc")]
    return sorted(names, key=lambda k: (k != "test_acc", k))


def read_metrics(run_dir):
    """The rows of a run's `metrics.csv`; UsageError naming the file when it is unreadable or damaged."""
    path = Path(run_dir) / "metrics.csv"
    try:
        columns, rows = read_csv(path)
    except InputError as error:
        raise UsageError(str(error)) from None
    problem = metrics_problem(columns, rows)
    if problem:
        raise UsageError(f"{path}: {problem}; not a training run's metrics.csv")
    return rows


def metrics_problem(columns, rows):
    """What makes `metrics.csv` rows unusable for the summary and the plot, or None."""
    problem = csv_problem(columns, rows, ("test_acc", *METRICS_NUMBERS))
    if problem or not rows:
        return problem
    numbers = [*measured_columns(rows), *METRICS_NUMBERS]
    for line, row in enumerate(rows, start=2):
        bad = next((column for column in numbers if not is_number(row[column], whole=column == "epoch")), None)
        if bad:
            return f"line {line}: {bad} is {row[bad]!r:.30}, not a {'whole ' if bad == 'epoch' else ''}number"
    return None


def csv_problem(columns, rows, required):
    """A column of `required` that is missing, else a row with more or fewer values than the header, or None."""
    missing = [name for name in required if name not in (columns or [])]
    if missing:
        return f"no column {', '.join(missing)}"
    return next((f"line {line} has {'more' if None in row else 'fewer'} values than the header"
                 for line, row in enumerate(rows, start=2) if None in row or None in row.values()), None)


def is_number(text, whole=False):
    """Whether `text` is a finite number (with `whole`, an integer)."""
    try:
        return int(text) >= 0 if whole else math.isfinite(float(text))
    except ValueError:
        return False


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
        if "test_at_best" in runs[0][-1]:  # --select-on val: the test accuracy at the epoch val chose
            measures["test at best val"] = [float(rows[-1]["test_at_best"]) for rows in runs]
        measures["s/epoch"] = [statistics.mean(float(r["epoch_time_s"]) for r in rows) for rows in runs]
        summary[model] = {k: mean_std(v) for k, v in measures.items()}
    return summary


def write_summary(out, summary, seeds, budget="epochs", epochs=None):
    """Write `summary.csv` and `summary.md` into `out` (atomically); returns the Markdown table.

    `budget` and `epochs` (`{model: epochs}`, optional) say what every model was given.
    """
    measures = list(next(iter(summary.values())))
    epochs = epochs or {}

    table = [["model", "seeds", "budget", "epochs"] + [f"{m} {part}" for m in measures for part in ("mean", "std")]]
    for model, values in summary.items():
        cells = ("" if v is None else f"{v:.4f}" for m in measures for v in values[m])
        table.append([model, seeds, budget, epochs.get(model, ""), *cells])
    atomic_write(out / "summary.csv", lambda handle: csv.writer(handle).writerows(table), mode="w", flag="--out")
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


def plot_curves(path, histories, title, num_classes=None, scale=None):
    """Test accuracy per epoch on a 0–100% axis, mean ± std band per model, chance dashed.

    With `scale` (`{model: images_per_epoch(...)}`) the x-axis is the training images seen, in
    passes over the train set, so that models given the same images end at the same place."""
    columns = accuracy_columns(next(iter(histories.values()))[0])
    fig, axes = plt.subplots(1, len(columns), figsize=(6 * len(columns), 4), squeeze=False)
    longest = max(len(runs[0]) for runs in histories.values())
    for ax, column in zip(axes[0], columns):
        if num_classes:
            ax.axhline(100 / num_classes, color="grey", linestyle="--", linewidth=1, label="chance")
        for (model, runs), style in zip(histories.items(), LINE_STYLES):
            epochs = [int(r["epoch"]) for r in runs[0]]
            x = [e * scale[model] for e in epochs] if scale else epochs
            values = [[float(rows[i][column]) for rows in runs] for i in range(len(epochs))]
            mean, std = zip(*(mean_std(v) for v in values))
            std = [s or 0.0 for s in std]  # no band for a single seed
            ax.plot(x, mean, style, label=model)
            ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            alpha=0.2)
        ax.set(xlabel="training images seen (passes over the train set)" if scale else "epoch",
               ylabel="accuracy (%)", ylim=(0, 100), title=f"{title}: {column.replace('_acc', '')}")
        if not scale and longest <= MAX_EPOCH_TICKS:
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
    own = argv[:argv.index("--")] if "--" in argv else argv
    passed = argv[argv.index("--") + 1:] if "--" in argv else []
    args = build_parser().parse_args(own)
    try:
        if args.merge:
            return merge_command(args, own, passed)
        if args.seeds < 1 or args.first_seed < 0:
            raise UsageError("--seeds must be at least 1 and --first-seed at least 0")
        refuse_options_set_per_run(passed)
        out = new_output_dir(args.out or f"log/compare-{args.dataset}")
        epochs = planned_epochs(args.models, args.dataset, passed, args.budget)
        make_output_dir(check_output_dir(out, "--out", create=True), "--out")
        return compare(args, out, passed, epochs)
    except (OutputError, UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def new_output_dir(path):
    """`--out` as a Path, refused when it is a folder that already holds files."""
    out = Path(path)
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"--out {out} already holds files; choose a new folder")
    return out


def merge_command(args, own, passed):
    """`--merge DIR ... --out NEW`: the summary and plot of the finished seeds of the folders."""
    unused = [flag for flag in ("--dataset", "--seeds", "--first-seed", "--models", "--budget")
              if any(arg == flag or arg.startswith(flag + "=") for arg in own)]
    if unused or passed:
        raise UsageError(f"--merge trains nothing; {', '.join(unused) or 'training options after --'} "
                         "would have no effect (the folders' runs say what they were)")
    if not args.out:
        raise UsageError("--merge needs --out, a new folder for the merged summary")
    out = new_output_dir(args.out)
    runs = merged_runs([Path(folder) for folder in args.merge])
    make_output_dir(check_output_dir(out, "--out", create=True), "--out")
    print(write_reports(out, *runs))
    return 0


def compare(args, out, passed, epochs):
    """Train every model and seed into `out` for its `epochs[model]`, seed by seed, rewriting the
    summary and the plot after each seed (so a run stopped part-way keeps the seeds it finished)."""
    print(budget_note(args.budget, epochs))
    histories = {model: [] for model in args.models}
    # each model's own --epochs under the images budget, appended after the passed options: the last one wins
    budget = {model: ["--epochs", str(epochs[model])] if args.budget == "images" else [] for model in args.models}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for model in args.models:
            script, extra = MODELS[model]
            run_dir = out / f"{model}-seed{seed}"
            code = train_main(script, ["--dataset", args.dataset, "--seed", str(seed), "--output-dir",
                                       str(run_dir), *extra, *passed, *budget[model]])
            if code != 0:
                print(f"error: training {model} (seed {seed}) ended with exit code {code}", file=sys.stderr)
                return code
            histories[model].append(read_metrics(run_dir))
        configs = {model: read_run_config(out / f"{model}-seed{args.first_seed}") for model in args.models}
        text = write_reports(out, histories, configs, args.budget, epochs)
    print(text)
    print(f"wrote {out / 'summary.csv'}, {out / 'summary.md'} and {out / 'accuracy.png'}")
    return 0


def write_reports(out, histories, configs, budget, epochs):
    """`summary.csv`, `summary.md` and `accuracy.png` in `out` for `{model: [metrics rows per seed]}`;
    `configs` holds one run's `config.json` per model. Returns the Markdown table."""
    seeds = len(next(iter(histories.values())))
    text = write_summary(out, summarise(histories), seeds, budget, epochs)
    some = next(iter(configs.values()))
    scale = {model: float(images_per_epoch(c)) for model, c in configs.items()} if budget == "images" else None
    plot_curves(out / "accuracy.png", histories, some["dataset"], some.get("num_classes"), scale)
    return text


def read_run_config(run_dir):
    """A run's `config.json`; UsageError naming it when it is unreadable or its settings that the
    summary uses (title, chance line, images budget) are not what the settings schema allows."""
    path = Path(run_dir) / "config.json"
    config = read_json_file(path)
    try:
        if not isinstance(config, dict):
            raise UsageError("holds no JSON object")
        check({"dataset": config.get("dataset"), "arch": config.get("arch"),
               "balanced_sampler": config.get("balanced_sampler"),
               "anchor_divisor": config.get("anchor_divisor") if config.get("balanced_sampler") else 1}
              | {key: config[key] for key in ("num_classes",) if config.get(key) is not None})  # None: no chance line
    except UsageError as error:
        raise UsageError(f"{path}: {error}; not a training run's config.json") from None
    return config


def merged_runs(folders):
    """`(histories, configs, budget, epochs)` of the finished seeds of earlier compare folders (the
    same models, budget and epochs; for example one comparison's seeds split over several commands)."""
    plans = [read_plan(folder) for folder in folders]
    if any(plan != plans[0] for plan in plans):
        raise UsageError("--merge: the folders differ in models, budget or epochs: "
                         + "; ".join(f"{folder}: {plan}" for folder, plan in zip(folders, plans)))
    budget = next(iter(plans[0].values()))[0]
    epochs = {model: n for model, (_, n) in plans[0].items()}
    histories, seen, first_runs = {model: [] for model in epochs}, {}, {}
    for folder in folders:
        for seed, runs in finished_seeds(folder, epochs).items():
            if seed in seen:
                raise UsageError(f"--merge: seed {seed} is in both {seen[seed]} and {folder}")
            seen[seed] = folder
            for model, (run, rows) in runs.items():
                first_runs.setdefault(model, (run, rows))
                refuse_other_columns(run, rows, *next(iter(first_runs.values())))
                histories[model].append(rows)
    if not histories[next(iter(epochs))]:
        raise UsageError("--merge: no seed has finished runs of every model in " + ", ".join(map(str, folders)))
    return histories, {model: read_run_config(run) for model, (run, _) in first_runs.items()}, budget, epochs


def read_plan(folder):
    """`{model: (budget, epochs)}` from a compare folder's `summary.csv`; UsageError naming it when
    it is missing, unreadable or not a compare summary."""
    path = folder / "summary.csv"
    try:
        columns, rows = read_csv(path)
    except InputError as error:
        raise UsageError(f"--merge {folder}: no readable summary.csv, not a compare folder with a finished seed "
                         f"({error})") from None
    problem = plan_problem(columns, rows)
    if problem:
        raise UsageError(f"--merge {path}: {problem}; not a compare summary")
    return {row["model"]: (row["budget"], int(row["epochs"])) for row in rows}


def plan_problem(columns, rows):
    """What makes `summary.csv` rows unusable as a comparison's models, budget and epochs, or None."""
    problem = csv_problem(columns, rows, ("model", "budget", "epochs"))
    if problem or not rows:
        return problem or "no model rows"
    for line, row in enumerate(rows, start=2):
        if row["model"] not in MODELS:
            return f"line {line}: model {row['model']!r:.30} is not one of {', '.join(MODELS)}"
        if row["budget"] not in BUDGETS:
            return f"line {line}: budget {row['budget']!r:.30} is not one of {', '.join(BUDGETS)}"
        if row["budget"] != rows[0]["budget"]:
            return f"line {line}: budget {row['budget']} differs from line 2's {rows[0]['budget']}"
        if not is_number(row["epochs"], whole=True) or int(row["epochs"]) < 1:
            return f"line {line}: epochs {row['epochs']!r:.30} is not a whole number of at least 1"
        if [other["model"] for other in rows].count(row["model"]) > 1:
            return f"line {line}: model {row['model']} is listed twice"
    return None


def refuse_other_columns(run, rows, first_run, first_rows):
    """UsageError when a run's metrics.csv measures other accuracies than the first merged run's (the
    summary and the plot read the same columns from every run)."""
    measured, expected = measured_columns(rows), measured_columns(first_rows)
    if measured != expected:
        raise UsageError(f"--merge {run / 'metrics.csv'}: its accuracy columns {', '.join(measured)} differ from "
                         f"those of {first_run / 'metrics.csv'} ({', '.join(expected)}); merge only comparisons "
                         "run with the same training options")


def measured_columns(rows):
    """The columns of metrics rows that the summary and the plot read."""
    return [*accuracy_columns(rows), *(["test_at_best"] if "test_at_best" in rows[0] else [])]


def finished_seeds(folder, epochs):
    """`{seed: {model: (run folder, metrics rows)}}` for the seeds of a compare folder whose runs of
    every model trained all `epochs[model]` epochs (a stopped comparison's last seed may be
    unfinished); folders not named as compare names runs (`QCS-seed3`) are not runs."""
    seeds = {}
    for model in epochs:
        for run in sorted(folder.glob(f"{model}-seed*")):
            name = re.fullmatch(rf"{re.escape(model)}-seed(0|[1-9][0-9]*)", run.name)
            if not name or not (run / "metrics.csv").is_file():
                continue
            rows = read_metrics(run)
            if len(rows) == epochs[model]:
                seeds.setdefault(int(name[1]), {})[model] = (run, rows)
    return {seed: runs for seed, runs in sorted(seeds.items()) if len(runs) == len(epochs)}


if __name__ == "__main__":
    sys.exit(main())
