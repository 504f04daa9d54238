"""Checkpoints are untrusted input, read in one place (utils/checkpoint.py): damaged files, malformed
saved settings and training state, foreign pickles, weights that cannot be right; and what is written."""
import os

import pytest
import torch

from helpers import tiny_eval_args as eval_options
from helpers import tiny_training_args
from utils.train import main


def rewritten(source, target, change):
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, target)
    return target


def test_a_resumed_config_with_batch_size_zero_is_refused(trained_run_copy, capsys):
    run = trained_run_copy
    rewritten(run / "last.pth", run / "last.pth", lambda c: c["run_config"].update(batch_size=0))
    assert main("qcs", ["--resume", str(run / "last.pth"), "--epochs", "2"]) == 2
    assert "saved settings are invalid: --batch-size must be at least 1" in capsys.readouterr().out


@pytest.mark.parametrize("change,expected", [
    (lambda c: c["run_config"].update(image_size=100000), "--image-size must be at least 16 and at most 1024"),
    (lambda c: c["run_config"].update(augmentation="B"), "augmentation must be a mapping"),
    (lambda c: c["run_config"].update(augmentation=dict(kind="B", resize=100000, rotation=10)),
     "augmentation {'kind': 'B', 'resize': 100000"),
    (lambda c: c["config"].update(size="huge"), "--size 'huge' is not one of"),
    (lambda c: c.update(classes=[1, 2, 3]), "saved class names are malformed"),
])
def test_malformed_saved_settings_are_one_line_errors(trained_run, folder_data, tmp_path, change, expected,
                                                      capsys):
    from utils.tools.cli import main as tools_main

    checkpoint = rewritten(trained_run / "best.pth", tmp_path / "bad.pth", change)
    assert main("qcs", eval_options(folder_data, "--evaluate", str(checkpoint))) == 2
    assert expected in capsys.readouterr().out
    assert tools_main(["inspect", str(checkpoint)]) == 2
    assert expected in capsys.readouterr().err


class RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_naming_a_blocked_module_is_one_line_everywhere(trained_run, folder_data, tmp_path,
                                                                 capsys):
    from utils.tools.cli import main as tools_main

    marker = tmp_path / "code-ran"
    checkpoint = tmp_path / "evil.pth"
    torch.save({**torch.load(trained_run / "last.pth", weights_only=True),
                "extra": RunsAShellCommand(marker)}, checkpoint)
    commands = [("qcs", eval_options(folder_data, "--evaluate", str(checkpoint))),
                ("qcs", ["--resume", str(checkpoint), "--output-dir", str(tmp_path / "r")]),
                ("dcs", tiny_training_args(folder_data, "--pretrained", str(checkpoint),
                                           "--output-dir", str(tmp_path / "p")))]
    for arch, argv in commands:
        assert main(arch, argv) == 2
        lines = [line for line in capsys.readouterr().out.splitlines() if "error:" in line]
        assert len(lines) == 1 and "holds code references (posix.system)" in lines[0], lines
        assert "was not loaded" in lines[0] and "weights_only" not in lines[0]
    assert tools_main(["inspect", str(checkpoint)]) == 2
    assert "holds code references (posix.system)" in capsys.readouterr().err
    assert not marker.exists()


def test_inspect_lists_foreign_objects_in_our_format_too(trained_run, tmp_path, capsys):
    from utils.tools.cli import main as tools_main

    path = tmp_path / "annotated.pth"
    torch.save({**torch.load(trained_run / "last.pth", weights_only=True), "notes": [{"by": Note()}]}, path)
    assert tools_main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "foreign pickled objects: " in out and "Note" in out.split("foreign pickled objects: ")[1]


class Note:
    """A class from outside the project, pickled into a checkpoint."""




def error_lines(text):
    return [line for line in text.splitlines() if "error:" in line]


def run_tools(argv):
    from utils.tools.cli import main as tools_main

    return tools_main(argv)


# ------------------------------------------------------------------ damaged files and contents

def test_a_zip_checkpoint_with_a_missing_record_is_one_line(trained_run, folder_data, tmp_path, capsys):
    import zipfile

    damaged = tmp_path / "damaged.pth"
    with zipfile.ZipFile(trained_run / "best.pth") as source, zipfile.ZipFile(damaged, "w") as target:
        records = source.namelist()
        dropped = next(name for name in records if "/data/" in name)
        for name in records:
            if name != dropped:
                target.writestr(source.getinfo(name), source.read(name))
    assert main("qcs", eval_options(folder_data, "--evaluate", str(damaged))) == 2
    lines = error_lines(capsys.readouterr().out)
    assert len(lines) == 1 and f"{damaged} is a damaged checkpoint" in lines[0], lines
    assert run_tools(["inspect", str(damaged)]) == 2
    assert "is a damaged checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("change,expected", [
    (lambda c: c.update(model=[1, 2, 3]), "its 'model' entry is not a state dict (a list)"),
    (lambda c: c.update(model=7), "its 'model' entry is not a state dict (a int)"),
    (lambda c: c.update(model={"a": 1, "b": 2}), "does not map tensor names to tensors"),
    (lambda c: c["model"].update({"base.vit.head.classifier.weight": torch.tensor(1.0)}),
     "the classifier weight (vit.head.classifier.weight) has shape ()"),
    (lambda c: c.update(classes=["calm", "joy"]), "it names 2 classes but its head has 3"),
])
def test_a_damaged_model_entry_is_one_line_for_inspect_and_evaluate(trained_run, folder_data, tmp_path, change,
                                                                    expected, capsys):
    checkpoint = rewritten(trained_run / "best.pth", tmp_path / "bad.pth", change)
    assert run_tools(["inspect", str(checkpoint)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert main("qcs", eval_options(folder_data, "--evaluate", str(checkpoint))) == 2
    lines = error_lines(capsys.readouterr().out)
    assert len(lines) == 1 and expected in lines[0], lines


def poisoned(checkpoint, value):
    """The checkpoint with its classifier weights replaced by `value` (same shape)."""
    head = checkpoint["model"]["base.vit.head.classifier.weight"]
    checkpoint["model"]["base.vit.head.classifier.weight"] = torch.full_like(head, value)


def test_nan_weights_are_refused_by_evaluate_and_predict(trained_run, folder_data, tmp_path, capsys):
    checkpoint = rewritten(trained_run / "best.pth", tmp_path / "nan.pth", lambda c: poisoned(c, float("nan")))
    assert main("qcs", eval_options(folder_data, "--evaluate", str(checkpoint))) == 2
    lines = error_lines(capsys.readouterr().out)
    assert len(lines) == 1 and "1 tensors hold NaN or infinite values" in lines[0], lines
    assert "vit.head.classifier.weight" in lines[0] and "test accuracy" not in lines[0]
    image = next((folder_data / "test" / "joy").iterdir())
    assert run_tools(["predict", "--checkpoint", str(checkpoint), "--no-detect", str(image)]) == 2
    err = capsys.readouterr().err
    assert "hold NaN or infinite values" in err and "nan%" not in err


def test_integer_weights_are_refused_and_half_precision_ones_load(trained_run, folder_data, tmp_path, capsys):
    def as_int8(checkpoint):
        head = checkpoint["model"]["base.vit.head.classifier.weight"]
        checkpoint["model"]["base.vit.head.classifier.weight"] = head.mul(100).to(torch.int8)

    quantised = rewritten(trained_run / "best.pth", tmp_path / "int8.pth", as_int8)
    assert main("qcs", eval_options(folder_data, "--evaluate", str(quantised))) == 2
    lines = error_lines(capsys.readouterr().out)
    assert len(lines) == 1 and "stored as torch.int8" in lines[0] and "quantised" in lines[0], lines

    def as_half(checkpoint):
        checkpoint["model"] = {k: v.half() if v.is_floating_point() else v for k, v in checkpoint["model"].items()}

    half = rewritten(trained_run / "best.pth", tmp_path / "half.pth", as_half)
    assert main("qcs", eval_options(folder_data, "--evaluate", str(half))) == 0
    out = capsys.readouterr().out
    assert "float16 weights computed in float32" in out and "test accuracy" in out


# ------------------------------------------------------------------ crafted training state and settings

CRAFTED = {
    "missing arch": (lambda c: [c["run_config"].pop(k, None) for k in ("recipe_arch", "arch")],
                     "its saved settings name no script"),
    "history of ints": (lambda c: c.update(history=[1, 2]), "history is not a list of per-epoch rows"),
    "empty rng": (lambda c: c.update(rng={}), "rng does not hold the python, numpy and torch"),
    "empty optimizer": (lambda c: c.update(optimizer={}), "optimizer holds no optimiser state"),
    "bad partial": (lambda c: c.update(step=1, partial={"loss_sum": "x"}), "partial (the sums of the unfinished"),
    "world size 0": (lambda c: c.update(world_size=0), "world_size is 0, not a number of processes"),
    "one rank's rng of two": (lambda c: c.update(world_size=2, rng_by_rank=[c["rng"]]),
                              "rng_by_rank does not hold the generator states of its 2 ranks"),
    "rotation inf": (lambda c: c["run_config"].update(augmentation=dict(kind="B", resize=40, rotation=float("inf"))),
                     "holds a value that is not a finite number"),
    "rotation nan": (lambda c: c["run_config"].update(augmentation=dict(kind="B", resize=40, rotation=float("nan"))),
                     "holds a value that is not a finite number"),
    "anchor divisor 0": (lambda c: c["run_config"].update(anchor_divisor=0), "--anchor-divisor must be at least 1"),
    "data_root a number": (lambda c: c["run_config"].update(data_root=5), "--data-root must be a text or null"),
    "classes a number": (lambda c: c["run_config"].update(classes=7), "--classes must be a text or null"),
    "sampler 'no'": (lambda c: c["run_config"].update(balanced_sampler="no"),
                     "--balanced-sampler must be true or false, got 'no'"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_resume_checkpoint_is_one_line(trained_run_copy, case, capsys):
    change, expected = CRAFTED[case]
    last = rewritten(trained_run_copy / "last.pth", trained_run_copy / "last.pth", change)
    assert main("qcs", ["--resume", str(last), "--epochs", "2"]) == 2
    lines = error_lines(capsys.readouterr().out)
    assert len(lines) == 1 and expected in lines[0] and str(last) in lines[0], lines


@pytest.mark.parametrize("case", ["rotation inf", "rotation nan", "anchor divisor 0", "data_root a number",
                                  "classes a number", "sampler 'no'"])
def test_the_same_values_in_a_config_file_are_one_line(trained_run, folder_data, tmp_path, case, capsys):
    import json

    run_config = torch.load(trained_run / "last.pth", weights_only=True)
    CRAFTED[case][0](run_config)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(run_config["run_config"]))  # Infinity and NaN as Python's json writes them
    assert main("qcs", ["--config", str(path), "--output-dir", str(tmp_path / "r")]) == 2
    lines = error_lines(capsys.readouterr().out)
    assert len(lines) == 1 and CRAFTED[case][1] in lines[0] and str(path) in lines[0], lines
    assert not (tmp_path / "r").exists()


def test_a_missing_script_name_in_a_config_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text('{"dataset": "folder"}')
    assert main("qcs", ["--config", str(path)]) == 2
    assert "not a run's config.json (no recipe_arch)" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "log")


def test_a_mid_epoch_checkpoint_from_before_positions_were_recorded_still_reads(trained_run):
    # files written before the rename and the per-rank records: `partial`, no world_size or groups_done
    from utils.checkpoint import read_checkpoint
    from utils.resume import training_state_problem
    from utils.training_state import RunState
    checkpoint = read_checkpoint(trained_run / "last.pth")
    for key in ("epoch_sums", "world_size", "groups_done"):
        checkpoint.pop(key)
    sums = {"loss_sum": 1.5, "correct": 2.0, "anchors": 4.0, "seconds": 0.5}
    checkpoint.update(step=1, partial=sums)
    assert training_state_problem(checkpoint) is None
    state = RunState.from_checkpoint(checkpoint)
    assert (state.step, state.epoch_sums, state.world_size, state.groups_done) == (1, sums, 1, None)


def test_evaluate_reads_the_checkpoint_file_once(trained_run_copy, folder_data, monkeypatch):
    trained_run = trained_run_copy  # the evaluation draws its confusion figure into the run folder
    real_load, loads = torch.load, []

    def counting_load(source, *args, **kwargs):
        if os.path.realpath(source) == os.path.realpath(trained_run / "best.pth"):
            loads.append(source)
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    assert main("qcs", eval_options(folder_data, "--evaluate", str(trained_run / "best.pth"))) == 0
    assert len(loads) == 1, f"--evaluate deserialised its checkpoint {len(loads)} times"
