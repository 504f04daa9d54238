"""Edges of the command lines' own text: `--help` of main_DCS.py / main_QCS.py and of every
`python -m utils.tools` subcommand shows each option's default once, and never `(default: None)`.

The reference is the parsers' own actions: an option whose default is a value (not None, not an
off switch) shows it, unless its help already says what its default is; no other shows one.
"""
import argparse
import subprocess
import sys

import pytest

from helpers import ROOT
from utils import config
from utils.tools import cli as tools
from utils.train import main as train_main

HAND_CHECKED = {  # whole entries as --help prints them, whitespace collapsed
    "qcs": ["--seed SEED (default: 0)", "--rho RHO SAM neighbourhood size (default: 0.05)",
            "--data-root DATA_ROOT dataset folder (default: ./datas/<dataset>)", "--lr LR",
            "--size {paper,small,tiny} model size preset (default paper; tiny for demo)",
            "--baseline train the base branch alone (IR50+ViT, no cross module) on single images, with this "
            "script's recipe: the paper's baseline"],
    "predict": ["--top-k TOP_K (default: 3)", "--size {paper,small,tiny} model size (default: from the checkpoint)"],
    "heatmaps": ["--seed SEED draws the anchor, partners and grid samples (0..4294967295) (default: 0)"],
    "export": ["--format FORMAT [FORMAT ...] one or more of: torchscript, export (torch.export program), onnx "
               "(dynamo exporter, opset 20, dynamic batch; needs requirements-onnx.txt), safetensors (weights; "
               "needs requirements-safetensors.txt), both (torchscript and export), all (default: both)"],
    "inspect": ["--json print the description as JSON"],
}


def help_entries(text):
    """`{first option string: its whole entry, whitespace collapsed}` of an argparse --help text."""
    entries, current = {}, None
    for line in text.splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif line.startswith("    ") and current:
            entries[current] += " " + line
        else:
            current = None
    return {option: " ".join(entry.split()) for option, entry in entries.items()}


def printed_help(command, argv, capsys):
    with pytest.raises(SystemExit) as exited:
        command(argv)
    assert exited.value.code == 0
    return capsys.readouterr().out


def shows_a_value(default):
    return not (default is None or default is False or default is argparse.SUPPRESS)


def check_defaults_once(text, parser):
    """Every option's entry says its default at most once, and says it exactly when it has one to show."""
    assert "(default: None)" not in text and "(default: False)" not in text
    entries = help_entries(text)
    for action in parser._actions:
        if not action.option_strings or action.default is argparse.SUPPRESS:
            continue
        entry = entries[action.option_strings[0]]
        said_in_help = "default" in (action.help or "")
        assert entry.count("default") == (1 if said_in_help or shows_a_value(action.default) else 0), entry
        if shows_a_value(action.default) and not said_in_help:
            assert entry.endswith(f"(default: {action.default})"), entry
    return entries


@pytest.mark.parametrize("arch", ["dcs", "qcs"])
def test_training_help_shows_every_default_once(arch, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    entries = check_defaults_once(printed_help(lambda argv: train_main(arch, argv), ["--help"], capsys),
                                  config.build_parser(arch))
    for expected in HAND_CHECKED["qcs"]:
        assert expected in entries.values()


@pytest.mark.parametrize("command", ["predict", "heatmaps", "export", "inspect"])
def test_tool_help_shows_every_default_once(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    text = printed_help(tools.main, [command, "--help"], capsys)
    commands = next(a for a in tools.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    entries = check_defaults_once(text, commands.choices[command])
    for expected in HAND_CHECKED[command]:
        assert expected in entries.values()


def test_one_formatter_class_serves_training_and_tools():
    assert tools.DefaultsOnceFormatter is config.DefaultsOnceFormatter
    assert config.build_parser("qcs").formatter_class is config.DefaultsOnceFormatter


@pytest.mark.parametrize("command", ["predict", "demo"])
def test_top_k_below_one_is_one_line_before_any_work(command, tmp_path, capsys):
    assert tools.main([command, "--checkpoint", str(tmp_path / "absent.pth"), "--top-k", "0"]) == 2
    assert capsys.readouterr().err == "error: --top-k must be at least 1, got 0\n"


def test_a_bad_tool_option_answers_before_torch_is_imported(tmp_path):
    probe = ("import sys\nfrom utils.tools.cli import main\n"
             f"code = main(['predict', '--checkpoint', {str(tmp_path / 'absent.pth')!r}, '--top-k', '0'])\n"
             "print(code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["2", "False"], done.stderr
