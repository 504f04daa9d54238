"""Option resolution: options that cannot apply are refused, naming both sides; valid ones pass."""
import pytest

from utils.config import UsageError, parse_args, resolve_config
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
