"""`python -m utils.tools.compare`: baseline, DCS and QCS over seeds, summarised from the runs' metrics."""
import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest
from PIL import Image

import utils.tools.compare
from data_preprocessing.outputs import OutputError
from utils.config import parse_args, resolve_config
from utils.tools.compare import main, plot_curves, summarise, write_summary


@pytest.mark.slow  # six training runs: three models, two seeds
def test_compare_trains_every_model_and_summarises_the_seeds(folder_data, tmp_path, capsys):
    data = folder_data
    out = tmp_path / "compare"
    training = ["--data-root", str(data), "--size", "tiny", "--image-size", "32", "--workers", "0",
                "--pretrained", "none", "-b", "4", "--lr", "1e-3", "--epochs", "2"]
    assert main(["--dataset", "folder", "--seeds", "2", "--out", str(out), "--", *training]) == 0
    rows = {r["model"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert list(rows) == ["baseline", "DCS", "QCS"]
    for model, row in rows.items():
        runs = [list(csv.DictReader(open(out / f"{model}-seed{seed}" / "metrics.csv"))) for seed in (0, 1)]
        best = [max(float(r["test_acc"]) for r in run) for run in runs]
        final = [float(run[-1]["mean_class_acc"]) for run in runs]
        assert float(row["best test_acc mean"]) == pytest.approx(statistics.mean(best), abs=1e-4)
        assert float(row["best test_acc std"]) == pytest.approx(statistics.stdev(best), abs=1e-4)
        assert float(row["final mean_class_acc mean"]) == pytest.approx(statistics.mean(final), abs=1e-4)
    assert (out / "accuracy.png").stat().st_size > 0
    assert "| baseline |" in (out / "summary.md").read_text()
    assert main(["--dataset", "folder", "--out", str(out)]) == 2  # never overwrites


def rows(test, flipped, mean_class):
    """metrics.csv rows of one run: per-epoch accuracies as the training CLI writes them."""
    return [dict(epoch=str(e + 1), train_acc="50", test_acc=str(t), test_flipped_acc=str(f),
                 mean_class_acc=str(m), best_acc=str(max(test[:e + 1])), epoch_time_s=str(10 * (e + 1) + t))
            for e, (t, f, m) in enumerate(zip(test, flipped, mean_class))]


def test_extra_split_is_summarised_and_plotted_beside_test(tmp_path):
    histories = {"baseline": [rows([20, 40], [10, 5], [18, 38]), rows([30, 20], [0, 15], [28, 22])],
                 "QCS": [rows([50, 60], [30, 40], [50, 60]), rows([70, 60], [20, 30], [66, 58])]}
    summary = summarise(histories)
    # baseline: best test 40 and 30, final flipped 5 and 15, final mean class 38 and 22 (by hand)
    assert summary["baseline"]["best test_acc"] == pytest.approx((35.0, 50 ** 0.5))
    assert summary["baseline"]["final test_flipped_acc"] == pytest.approx((10.0, 50 ** 0.5))
    assert summary["baseline"]["best test_flipped_acc"] == pytest.approx((12.5, 12.5 ** 0.5))
    assert summary["QCS"]["final mean_class_acc"] == pytest.approx((59.0, 2 ** 0.5))
    assert summary["QCS"]["s/epoch"] == pytest.approx((75.0, 50 ** 0.5))  # (60+80)/2 and (80+80)/2
    assert "train_acc" not in " ".join(summary["QCS"]) and "best_acc" not in " ".join(summary["QCS"])
    text = write_summary(tmp_path, summary, seeds=2)
    assert "| QCS | 65.00 ± 7.07 |" in text  # best test 60 and 70
    header = next(csv.reader(open(tmp_path / "summary.csv")))
    assert "best test_flipped_acc mean" in header and "final test_flipped_acc std" in header
    plot_curves(tmp_path / "accuracy.png", histories, "demo", num_classes=7)
    with Image.open(tmp_path / "accuracy.png") as image:
        assert image.size == (1200, 400)  # one 6×4 inch panel per split (test, test_flipped) at 100 dpi


def test_a_single_seed_has_no_spread(tmp_path):
    summary = summarise({"QCS": [rows([50, 60], [30, 40], [50, 60])]})
    assert summary["QCS"]["best test_acc"] == (60.0, None)
    text = write_summary(tmp_path, summary, seeds=1)
    assert "| QCS | 60.00 | 60.00 | 40.00 | 40.00 | 60.00 | 60.00 | 70.00 |" in text and "±" not in text
    row = list(csv.DictReader(open(tmp_path / "summary.csv")))[0]
    assert row["best test_acc mean"] == "60.0000" and row["best test_acc std"] == ""


def test_an_out_that_cannot_be_written_is_refused_before_training(tmp_path, capsys, monkeypatch):
    def no_training(*args):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(utils.tools.compare, "train_main", no_training)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    for out, cause in ((blocker, "is a file, not a folder"), (blocker / "compare", f"{blocker} is not a folder")):
        assert main(["--dataset", "folder", "--out", str(out)]) == 2
        assert capsys.readouterr().err == f"error: --out {out}: {cause}\n"


def test_summary_and_plot_go_through_the_output_layer(tmp_path):
    summary = summarise({"QCS": [rows([50, 60], [30, 40], [50, 60])]})
    missing = tmp_path / "missing"
    with pytest.raises(OutputError, match=f"--out {missing / 'summary.csv'}: folder {missing} does not exist"):
        write_summary(missing, summary, seeds=1)
    with pytest.raises(OutputError, match=f"--out {missing / 'accuracy.png'}: folder {missing} does not exist"):
        plot_curves(missing / "accuracy.png", {"QCS": [rows([50, 60], [30, 40], [50, 60])]}, "demo")


def record_training(monkeypatch):
    """Replace training by a stand-in that records each run's argv and writes its metrics for the epochs asked."""
    calls = []

    def train(script, argv):
        args = parse_args(script, argv)  # what the training command line makes of argv
        calls.append((script, argv, args))
        run = Path(args.output_dir)
        run.mkdir(parents=True)
        epochs = args.epochs or 2
        history = rows([50.0] * epochs, [10.0] * epochs, [50.0] * epochs)
        with open(run / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
        (run / "config.json").write_text(json.dumps({**resolve_config(script, args), "num_classes": 7}))
        return 0

    monkeypatch.setattr(utils.tools.compare, "train_main", train)
    return calls


@pytest.mark.parametrize("dataset,passed,expected", [
    # every image is an anchor once per epoch: 4 images per anchor for QCS, 2 for DCS, 1 for the baseline
    ("demo", ["--epochs", "3"], {"baseline": 12, "DCS": 6, "QCS": 3}),
    ("demo", [], {"baseline": 28, "DCS": 14, "QCS": 7}),  # QCS's demo recipe: 7 epochs
    # balanced anchors, per epoch L//12 for QCS and the baseline, L//8 for DCS: QCS 4·L/12 = L/3 images,
    # DCS 2·L/8 = L/4, baseline L/12; QCS's 3 epochs are L images: DCS 4 epochs, the baseline 12
    ("AffectNet-8", ["--epochs", "3"], {"baseline": 12, "DCS": 4, "QCS": 3}),
], ids=["demo-given", "demo-recipe", "affectnet-balanced"])
def test_images_budget_gives_every_model_the_images_of_qcs(dataset, passed, expected, tmp_path, monkeypatch, capsys):
    calls = record_training(monkeypatch)
    out = tmp_path / "compare"
    assert main(["--dataset", dataset, "--seeds", "1", "--budget", "images", "--out", str(out), "--", *passed]) == 0
    got = {("baseline" if args.baseline else script.upper()): args.epochs for script, _, args in calls}
    assert got == expected
    note = f"budget images (as many training images as QCS): baseline {expected['baseline']}, " \
           f"DCS {expected['DCS']}, QCS {expected['QCS']} epochs"
    assert note in capsys.readouterr().out
    assert note in (out / "summary.md").read_text()
    summary = {r["model"]: (r["budget"], int(r["epochs"])) for r in csv.DictReader(open(out / "summary.csv"))}
    assert summary == {model: ("images", n) for model, n in expected.items()}


def test_images_budget_without_qcs_still_counts_qcs_epochs(tmp_path, monkeypatch):
    calls = record_training(monkeypatch)
    assert main(["--dataset", "demo", "--seeds", "1", "--budget", "images", "--models", "baseline",
                 "--out", str(tmp_path / "compare"), "--", "--epochs", "5"]) == 0
    assert [args.epochs for _, _, args in calls] == [20]


def test_epochs_budget_passes_the_options_unchanged_and_says_so(tmp_path, monkeypatch):
    calls = record_training(monkeypatch)
    out = tmp_path / "compare"
    assert main(["--dataset", "demo", "--seeds", "1", "--out", str(out), "--", "--epochs", "3"]) == 0
    assert [argv for _, argv, _ in calls] == [
        ["--dataset", "demo", "--seed", "0", "--output-dir", str(out / f"{model}-seed0"), *extra, "--epochs", "3"]
        for model, extra in (("baseline", ["--baseline"]), ("DCS", []), ("QCS", []))]
    assert "budget epochs (each run's --epochs, or its recipe's): baseline 3, DCS 3, QCS 3 epochs" in \
        (out / "summary.md").read_text()


def test_seeds_run_in_turn_and_a_stopped_compare_keeps_the_seeds_it_finished(tmp_path, monkeypatch, capsys):
    calls = record_training(monkeypatch)
    recorded = utils.tools.compare.train_main

    def fail_on_the_second_qcs(script, argv):
        if script == "qcs" and "--baseline" not in argv and "1" == argv[argv.index("--seed") + 1]:
            return 1
        return recorded(script, argv)

    monkeypatch.setattr(utils.tools.compare, "train_main", fail_on_the_second_qcs)
    out = tmp_path / "compare"
    assert main(["--dataset", "demo", "--seeds", "3", "--out", str(out), "--", "--epochs", "2"]) == 1
    order = [("baseline" if args.baseline else script.upper(), args.seed) for script, _, args in calls]
    assert order == [("baseline", 0), ("DCS", 0), ("QCS", 0), ("baseline", 1), ("DCS", 1)]
    assert {r["model"]: r["seeds"] for r in csv.DictReader(open(out / "summary.csv"))} == \
        {"baseline": "1", "DCS": "1", "QCS": "1"}
    assert "one seed" in (out / "summary.md").read_text() and (out / "accuracy.png").exists()
    assert "training QCS (seed 1) ended with exit code 1" in capsys.readouterr().err


def test_validation_selection_is_summarised_as_the_test_accuracy_at_the_chosen_epoch():
    # --select-on val: the last row's test_at_best is the test accuracy at the epoch val chose
    first, second = rows([20, 40, 30], [0] * 3, [0] * 3), rows([50, 60, 55], [0] * 3, [0] * 3)
    for run, at_best in ((first, ["20", "20", "30"]), (second, ["50", "60", "60"])):
        for row, value in zip(run, at_best):
            row["test_at_best"] = value
    summary = summarise({"baseline": [first, second]})
    assert summary["baseline"]["test at best val"] == pytest.approx((45.0, 450 ** 0.5))  # 30 and 60
    assert summary["baseline"]["best test_acc"] == pytest.approx((50.0, 200 ** 0.5))  # 40 and 60: chosen on test


def test_seeds_split_over_two_commands_merge_into_one_summary(tmp_path, monkeypatch, capsys):
    calls = record_training(monkeypatch)
    first, second, merged = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    options = ["--dataset", "demo", "--budget", "images"]
    assert main([*options, "--seeds", "2", "--out", str(first), "--", "--epochs", "2"]) == 0
    assert main([*options, "--seeds", "1", "--first-seed", "2", "--out", str(second), "--", "--epochs", "2"]) == 0
    assert sorted({args.seed for _, _, args in calls}) == [0, 1, 2]
    shutil.rmtree(first / "QCS-seed1")  # seed 1 unfinished: left out of the merge
    (second / "DCS-seed9").mkdir()  # a run that never wrote metrics: left out too
    assert main(["--merge", str(first), str(second), "--out", str(merged)]) == 0
    rows = {r["model"]: r for r in csv.DictReader(open(merged / "summary.csv"))}
    assert {m: (r["seeds"], r["budget"], r["epochs"]) for m, r in rows.items()} == \
        {"baseline": ("2", "images", "8"), "DCS": ("2", "images", "4"), "QCS": ("2", "images", "2")}
    assert (merged / "accuracy.png").stat().st_size > 0
    for argv, message in (
            (["--merge", str(first), "--out", str(merged)], "already holds files"),
            (["--merge", str(first), "--seeds", "4", "--out", str(tmp_path / "c")], "--seeds would have no effect"),
            (["--merge", str(tmp_path / "none"), "--out", str(tmp_path / "c")], "no readable summary.csv"),
            (["--merge", str(first), str(first), "--out", str(tmp_path / "c")], f"seed 0 is in both {first}")):
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    assert main([*options, "--seeds", "1", "--out", str(tmp_path / "d"), "--", "--epochs", "3"]) == 0
    assert main(["--merge", str(first), str(tmp_path / "d"), "--out", str(tmp_path / "c")]) == 2
    assert "differ in models, budget or epochs" in capsys.readouterr().err


def test_options_compare_sets_per_run_are_refused_after_the_separator(tmp_path, monkeypatch, capsys):
    calls = record_training(monkeypatch)
    out = tmp_path / "compare"
    refused = [  # (options after --, the option named, what to use instead)
        (["--seed", "5"], "--seed", "--first-seed and --seeds"),  # all seeds ran with seed 5: std 0
        (["--see=5"], "--seed", "--first-seed and --seeds"),  # an abbreviation the training parser takes
        (["--output-dir", str(tmp_path / "elsewhere")], "--output-dir", "--out"),  # trained there, then crashed
        (["--dataset", "FER2013"], "--dataset", "compare's --dataset, before --"),
        (["--baseline"], "--baseline", "--models"),
        (["--resume", str(tmp_path / "last.pth")], "--resume", "--first-seed for the missing seeds and a new --out"),
        (["--evaluate", str(tmp_path / "best.pth")], "--evaluate", "main_QCS.py / main_DCS.py --evaluate"),
        (["--config", str(tmp_path / "config.json")], "--config", "those options themselves after --"),
    ]
    for passed, option, instead in refused:
        assert main(["--dataset", "demo", "--seeds", "2", "--out", str(out), "--", "--epochs", "1", *passed]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {option} after -- is refused: compare ") and err.count("\n") == 1
        assert f"; use {instead}" in err
    assert calls == [] and not out.exists() and not (tmp_path / "elsewhere").exists()
    # what compare forwards still reaches every run, each with its own seed and folder
    forwarded = ["--epochs", "1", "--size", "tiny", "--data-root", str(tmp_path / "data"), "-b", "2"]
    assert main(["--dataset", "demo", "--seeds", "2", "--models", "QCS", "--out", str(out), "--", *forwarded]) == 0
    assert [(args.seed, args.output_dir, args.size, args.data_root, args.batch_size) for _, _, args in calls] == \
        [(seed, str(out / f"QCS-seed{seed}"), "tiny", str(tmp_path / "data"), 2) for seed in (0, 1)]


def write_csv_rows(path, header, rows):
    path.write_text("\n".join(",".join(cells) for cells in [header, *rows]) + "\n")


def test_merge_of_damaged_folders_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    record_training(monkeypatch)
    good = tmp_path / "good"
    assert main(["--dataset", "demo", "--seeds", "2", "--out", str(good), "--", "--epochs", "2"]) == 0
    capsys.readouterr()
    metrics = "QCS-seed1/metrics.csv"
    header = (good / metrics).read_text().splitlines()[0].split(",")

    def replace_line(path, index, edit):
        lines = path.read_text().splitlines()
        lines[index] = edit(lines[index])
        path.write_text("\n".join(lines) + "\n")

    def without_flipped(path):  # a run of another comparison: no extra test split
        rows = list(csv.DictReader(open(path)))
        keep = [name for name in header if name != "test_flipped_acc"]
        write_csv_rows(path, keep, [[row[name] for name in keep] for row in rows])

    damages = [  # (what to damage, how, what the one line names and says)
        ("summary.csv", lambda p: p.unlink(), "{folder}: no readable summary.csv"),
        ("summary.csv", lambda p: p.write_bytes(b"\xff\xfe\x00\x81garbled"), "{folder}: no readable summary.csv"),
        ("summary.csv", lambda p: p.write_text(""), "{path}: no column model, budget, epochs"),
        ("summary.csv", lambda p: p.write_text("image,class\na.png,happy\n"), "{path}: no column model"),
        ("summary.csv", lambda p: replace_line(p, 1, lambda line: "QCS,2"), "{path}: line 2 has fewer values"),
        ("summary.csv", lambda p: replace_line(p, 1, lambda line: line.replace(",epochs,2,", ",epochs,two,")),
         "{path}: line 2: epochs 'two' is not a whole number"),
        ("summary.csv", lambda p: p.write_text("model,seeds,budget,epochs\n"), "{path}: no model rows"),
        (metrics, lambda p: replace_line(p, 2, lambda line: line.replace(",50.0,", ",fifty,", 1)),
         "{path}: line 3: test_acc is 'fifty', not a number"),
        (metrics, lambda p: replace_line(p, 1, lambda line: line.rsplit(",", 3)[0]), "{path}: line 2 has fewer"),
        (metrics, lambda p: replace_line(p, 1, lambda line: line + ",9,9"), "{path}: line 2 has more values"),
        (metrics, lambda p: p.write_bytes(b"epoch,test_acc\n\xff\xfe1,2\n"), "{path}: not UTF-8 text (byte 0xff"),
        (metrics, without_flipped, "{path}: its accuracy columns test_acc differ from those of"),
        ("baseline-seed0/config.json", lambda p: p.unlink(), "{path}: no such file or folder (ENOENT"),
        ("baseline-seed0/config.json", lambda p: p.write_text("{"), "{path}: not valid JSON"),
        ("baseline-seed0/config.json", lambda p: p.write_text("[]"), "{path}: holds no JSON object"),
    ]
    for case, (name, damage, expected) in enumerate(damages):
        folder, merged = tmp_path / f"damaged{case}", tmp_path / f"merged{case}"
        shutil.copytree(good, folder)
        damage(folder / name)
        assert main(["--merge", str(folder), "--out", str(merged)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert expected.format(folder=folder, path=folder / name) in err, err
        assert not merged.exists()

    empty, run_folder = tmp_path / "empty", tmp_path / "run"
    empty.mkdir()
    shutil.copytree(good / "QCS-seed0", run_folder)  # a training run, not a compare folder
    for folder in (empty, run_folder, good / "summary.md", tmp_path / "missing"):
        assert main(["--merge", str(folder), "--out", str(tmp_path / "merged")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --merge {folder}: no readable summary.csv") and err.count("\n") == 1
    # a copy the user made beside the runs is not a run: the merge leaves it out and works
    shutil.copytree(good / "QCS-seed0", good / "QCS-seed0-old")
    shutil.copytree(good / "DCS-seed1", good / "DCS-seed01")
    assert main(["--merge", str(good), "--out", str(tmp_path / "merged")]) == 0
    assert {r["model"]: r["seeds"] for r in csv.DictReader(open(tmp_path / "merged" / "summary.csv"))} == \
        {"baseline": "2", "DCS": "2", "QCS": "2"}
