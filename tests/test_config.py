"""Option resolution: options that cannot apply are refused, naming both sides; valid ones pass; every
source of a setting is checked by the one schema (utils/settings.py); the note of a dataset without a recipe."""
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import ROOT
from utils.config import UsageError, parse_args, resolve_config
from utils.recipes import fallback_note
from utils.train import main


def resolve(arch, *argv):
    return resolve_config(arch, parse_args(arch, list(argv)))


BASELINE_IGNORES = [("--attention", "sdpa"), ("--matrix", "s"), ("--connection", "gap"),
                    ("--cross-drop", "0.1"), ("--cross-block", "prenorm"), ("--distill", "kl"),
                    ("--distill-weight", "2"), ("--temperature", "2")]


@pytest.mark.parametrize("option,value", BASELINE_IGNORES)
def test_baseline_refuses_cross_module_options(option, value):
    with pytest.raises(UsageError, match=f"{option} has no effect with --baseline"):
        resolve("qcs", "--baseline", option, value)


def test_dcs_refuses_the_qcs_matrix_option():
    with pytest.raises(UsageError, match="--matrix has no effect with main_DCS.py"):
        resolve("dcs", "--matrix", "s")
    assert resolve("qcs", "--matrix", "s")["matrix"] == "s"


@pytest.mark.parametrize("connection", ["gap", "bp"])
def test_cross_drop_needs_the_cross_vit(connection):
    with pytest.raises(UsageError, match=f"--cross-drop has no effect with --connection {connection}"):
        resolve("qcs", "--connection", connection, "--cross-drop", "0.1")
    assert resolve("qcs", "--connection", "vit", "--cross-drop", "0.1")["cross_drop"] == 0.1


def test_proj_drop_rule_is_refused_only_where_no_vit_has_dropout():
    with pytest.raises(UsageError, match="--proj-drop-rule has no effect"):
        resolve("qcs", "--connection", "gap", "--proj-drop-rule", "drop")  # QCS RAF-DB: drop 0
    with pytest.raises(UsageError, match="--proj-drop-rule has no effect"):
        resolve("qcs", "--proj-drop-rule", "drop", "--drop", "0", "--cross-drop", "0")
    # either ViT with dropout gives the rule something to decide
    assert resolve("qcs", "--connection", "gap", "--proj-drop-rule", "drop", "--drop", "0.1")["drop"] == 0.1
    assert resolve("dcs", "--proj-drop-rule", "attn")["cross_drop"] == 0.2  # DCS RAF-DB cross ViT 0.2


@pytest.mark.parametrize("argv,option", [
    (["--distill-weight", "2"], "--distill-weight"),
    (["--temperature", "2"], "--temperature"),
    (["--distill", "mse", "--temperature", "2"], "--temperature"),
    (["--distill", "l2", "--temperature", "2"], "--temperature"),
])
def test_distillation_settings_need_their_distillation(argv, option):
    with pytest.raises(UsageError, match=f"{option} has no effect .*--distill"):
        resolve("qcs", *argv)


def test_valid_distillation_settings_pass():
    config = resolve("qcs", "--distill", "kl", "--temperature", "2", "--distill-weight", "0.5")
    assert (config["distill"], config["temperature"], config["distill_weight"]) == ("kl", 2.0, 0.5)
    assert resolve("qcs", "--distill", "mse", "--distill-weight", "3")["distill_weight"] == 3.0
    assert resolve("qcs", "--distill", "kl-detached", "--temperature", "3")["temperature"] == 3.0
    assert resolve("qcs", "--distill", "l2")["distill"] == "l2"


def test_an_explicit_default_is_refused_too():
    # giving an option states an intent the run would silently ignore, whatever its value
    with pytest.raises(UsageError, match="--distill-weight"):
        resolve("qcs", "--distill-weight", "1.0")


@pytest.mark.parametrize("argv", [["--epochs", "3"], ["--lr", "1e-3"], ["--seed", "1"],
                                  ["--pretrained", "none"], ["--attention", "sdpa"], ["--output-dir", "x"],
                                  ["--save-every", "0"], ["--baseline"], ["--checkpoint-backbone"]])
def test_evaluate_refuses_training_options(argv, tmp_path, capsys):
    # refused before the checkpoint is read: the file need not exist
    assert main("qcs", ["--evaluate", str(tmp_path / "missing.pth"), *argv]) == 2
    out = capsys.readouterr().out
    assert f"error: {argv[0]} only applies to training; --evaluate follows the checkpoint" in out


def test_evaluate_lists_every_training_option_given(tmp_path, capsys):
    assert main("dcs", ["--evaluate", str(tmp_path / "x.pth"), "--epochs", "3", "--lr", "1"]) == 2
    assert "--epochs, --lr only apply to training" in capsys.readouterr().out


def test_evaluate_accepts_its_own_options(tmp_path, capsys):
    # these reach the checkpoint, whose absence is then the error
    code = main("qcs", ["--evaluate", str(tmp_path / "missing.pth"), "-b", "4", "--workers", "0",
                        "--size", "tiny", "--image-size", "56", "--amp", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 2 and "missing.pth" in out and "only appl" not in out


# ------------------------------------------------------------------------------ the settings schema

FIXTURES = Path(__file__).parent / "fixtures"


def run_script(script, *argv):
    """`python SCRIPT ARGV...` at 80 columns: (exit status, stdout, whether torch was imported)."""
    probe = ("import runpy, sys\nscript, sys.argv = sys.argv[1], sys.argv[1:]\ncode = 0\ntry:\n"
             "    runpy.run_path(script, run_name='__main__')\nexcept SystemExit as stop:\n    code = stop.code\n"
             "print(code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe, script, *argv], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "80"}, timeout=60)
    out, _, last = done.stdout.rstrip("\n").rpartition("\n")
    code, torch_imported = last.split()
    return int(code), out + "\n" if out else "", torch_imported == "True"


@pytest.mark.parametrize("arch", ["qcs", "dcs"])
def test_help_is_the_previous_releases_and_imports_no_torch(arch):
    script = f"main_{arch.upper()}.py"
    expected = (FIXTURES / "help" / f"{script[:-3]}.txt").read_text()  # saved before the schema existed
    assert run_script(script, "--help") == (0, expected, False)


@pytest.mark.parametrize("argv,expected", [
    (["-b", "0"], "error: --batch-size must be at least 1 and at most 1000000, got 0"),
    (["--evaluate", "x.pth", "--epochs", "0"], "error: --epochs only applies to training; --evaluate follows the "
                                               "checkpoint"),
])
def test_a_usage_error_answers_before_torch_is_imported(argv, expected):
    code, out, torch_imported = run_script("main_QCS.py", *argv)
    assert code == 2 and not torch_imported and out.count("\n") == 1 and out.rstrip().endswith(expected), out


def one_line(out):
    lines = [line for line in out.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in out, out
    return lines[0]


@pytest.mark.parametrize("saved,expected", [
    ({"val_fraction": "0.1"}, "--val-fraction must be a number or null, got '0.1'"),
    ({"batch_size": 10 ** 20}, "--batch-size must be at least 1 and at most 1000000, got 100000000000000000000"),
    ({"lr": float("nan")}, "--lr must be > 0, got nan"),
    ({"size": "huge"}, "--size 'huge' is not one of paper, small, tiny"),
    ({"print_freq": True}, "--print-freq must be a whole number, got True"),
])
def test_a_replayed_config_is_checked_by_the_schema(tmp_path, saved, expected, capsys):
    released = json.loads((FIXTURES / "release_run" / "config.json").read_text())
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**released, **saved}))
    assert main("qcs", ["--config", str(path), "--output-dir", str(tmp_path / "run")]) == 2
    assert one_line(capsys.readouterr().out).endswith(f"error: --config {path}: its settings are invalid: {expected}")
    assert not (tmp_path / "run").exists()


def test_a_deeply_nested_config_is_one_line(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert main("qcs", ["--config", str(path), "--output-dir", str(tmp_path / "run")]) == 2
    assert f"--config {path}: not a readable JSON file" in one_line(capsys.readouterr().out)


@pytest.mark.parametrize("argv,expected", [
    (["-b", str(10 ** 20)], "--batch-size must be at least 1 and at most 1000000, got 100000000000000000000"),
    (["--seed", str(2 ** 64)], f"--seed must be at least 0 and at most 4294967295, got {2 ** 64}"),
    (["--lr", "inf"], "--lr must be > 0, got inf"),
    (["--epochs", "1000001"], "--epochs must be at least 1 and at most 1000000, got 1000001"),
])
def test_command_line_values_are_checked_by_the_schema(argv, expected):
    with pytest.raises(UsageError) as caught:
        resolve("qcs", *argv)
    assert str(caught.value) == expected


@pytest.mark.parametrize("argv,expected", [
    (["--image-size", "100000"], "--image-size must be at least 16 and at most 1024, got 100000"),
    (["--seed", str(2 ** 64)], f"--seed must be at least 0 and at most 4294967295, got {2 ** 64}"),
])
def test_the_diagnosis_tools_options_are_checked_by_the_schema(argv, expected, capsys):
    from utils.tools.diagnose import main as diagnose

    assert diagnose(argv) == 2 and capsys.readouterr().err == f"error: {expected}\n"


@pytest.mark.parametrize("change,expected", [
    (lambda c: c["scheduler"].update(gamma=5.0), "(gamma must be > 0 and ≤ 1, got 5.0)"),
    (lambda c: c["scheduler"].update(gamma=0.5), "the schedule (last_epoch 2, gamma 0.5) is not the run's "
                                                 "(epoch 2, --gamma 0.98)"),
    (lambda c: c["scheduler"].update(last_epoch=7), "the schedule (last_epoch 7, gamma 0.98) is not the run's"),
    (lambda c: c.update(step="3"), "step must be a whole number, got '3'"),
    (lambda c: c.update(best_acc=float("inf")), "best_acc must be at least 0 and at most 100, got inf"),
])
def test_a_resumed_checkpoints_schedule_and_counters_are_checked(tmp_path, change, expected, capsys):
    checkpoint = torch.load(FIXTURES / "release_run" / "last.pth", map_location="cpu", weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, tmp_path / "last.pth")
    assert main("qcs", ["--resume", str(tmp_path / "last.pth"), "--epochs", "3"]) == 2
    line = one_line(capsys.readouterr().out)
    assert f"--resume {tmp_path / 'last.pth'}: its training state is malformed (" in line and expected in line


def test_an_export_listing_a_class_twice_is_refused(tmp_path):
    from utils.checkpoint import CheckpointError
    from utils.inference import load_trained_model

    folder = Path(shutil.copytree(FIXTURES / "release_export", tmp_path / "export"))
    info = json.loads((folder / "model_info.json").read_text())
    (folder / "model_info.json").write_text(json.dumps({**info, "classes": ["calm", "joy", "calm"]}))
    with pytest.raises(CheckpointError, match="'classes' must be a list of at least 2 distinct class names"):
        load_trained_model(folder / "model.safetensors")


def test_the_schemas_choices_are_the_models_and_the_datas():
    import data_preprocessing
    import models
    from utils import device, settings

    assert settings.DATASET_NAMES == tuple(data_preprocessing.DATASET_NAMES)
    assert settings.MAX_IMAGE_SIDE == data_preprocessing.MAX_IMAGE_SIDE
    assert settings.DEVICE_CHOICES == device.DEVICE_CHOICES
    assert settings.DISTILL_CHOICES == models.DISTILL_CHOICES
    assert settings.TEMPERATURE_DISTILLS == models.TEMPERATURE_DISTILLS
    assert settings.ARCH_NAMES == tuple(models.ARCHS)
    for name, choices in models.OPTION_CHOICES.items():
        assert settings.BY_NAME[name].choices == tuple(choices), name
    assert set(settings.names(settings.MODEL)) | {"arch", "num_classes", "checkpoint_backbone"} == \
        set(inspect.signature(models.build_model).parameters)


# ------------------------------------------------------------------------------ datasets without a recipe

@pytest.mark.parametrize("arch,dataset,expected", [
    ("qcs", "FER2013", "FER2013 has no released recipe: it takes RAF-DB's QCS recipe: lr 3e-06, epochs 200, "
                       "batch size 24, augmentation kind=A"),
    ("dcs", "folder", "folder has no released recipe: it takes RAF-DB's DCS recipe: lr 9e-06, epochs 200, "
                      "batch size 48, augmentation kind=A"),
    ("qcs", "RAF-DB", None), ("dcs", "AffectNet-8", None), ("qcs", "demo", None),
])
def test_a_dataset_without_a_released_recipe_names_the_one_it_takes(arch, dataset, expected):
    assert fallback_note(resolve(arch, "--dataset", dataset)) == expected


def test_the_recipe_note_is_in_the_runs_log(trained_run):
    note = ("folder has no released recipe: it takes RAF-DB's QCS recipe: lr 0.001 (given; the recipe's 3e-06), "
            "epochs 1 (given; the recipe's 200), batch size 4 (given; the recipe's 24), augmentation kind=A")
    assert note in (trained_run / "log.txt").read_text()


def test_a_resumed_checkpoints_compile_backend_is_checked_before_any_work(tmp_path, capsys):
    checkpoint = torch.load(FIXTURES / "release_run" / "last.pth", map_location="cpu", weights_only=True)
    checkpoint["run_config"]["compile_backend"] = "no-such-backend"
    torch.save(checkpoint, tmp_path / "last.pth")
    assert main("qcs", ["--resume", str(tmp_path / "last.pth"), "--epochs", "3", "--compile"]) == 2
    assert "its saved settings are invalid: --compile-backend 'no-such-backend' is not a torch.compile backend " \
           "here" in one_line(capsys.readouterr().out)


def test_a_compared_runs_config_is_checked_by_the_schema(tmp_path):
    from utils.tools.compare import read_run_config

    released = json.loads((FIXTURES / "release_run" / "config.json").read_text())
    assert read_run_config(FIXTURES / "release_run") == released
    (tmp_path / "config.json").write_text(json.dumps({**released, "num_classes": "3"}))
    with pytest.raises(UsageError, match=r"config.json: --num-classes must be a whole number, got '3'; not a "
                                         r"training run's config.json"):
        read_run_config(tmp_path)
