"""The parameter types of channel lists, LAYER:CHANNELS and gates: what they parse to, and the one-line usage
error (exit 2, before the model is read) of what they refuse."""

from __future__ import annotations

import click
import pytest
from builders import run_cli

from onnxredund.analyses.gates import Gate
from onnxredund.cli.params import CHANNEL_LIST, GATE, LAYER_CHANNELS


@pytest.mark.parametrize(
    ("text", "want"),
    [("0,3,5-7", [0, 3, 5, 6, 7]), ("4,2,2-3", [4, 2, 3]), ("all", None), ("", None), (" 1 , 2 ", [1, 2])],
)
def test_a_channel_list_parses_to_each_channel_once_in_the_order_written(text, want):
    assert CHANNEL_LIST.convert(text, None, None) == want


@pytest.mark.parametrize(("text", "why"), [("x", "'x' is not a channel"), ("3-", "'3-' is not"), (",", "'' is not")])
def test_a_bad_channel_list_is_a_usage_error(text, why):
    with pytest.raises(click.BadParameter, match=why):
        CHANNEL_LIST.convert(text, None, None)


@pytest.mark.parametrize(
    ("text", "want"),
    [("conv2:3,7", ("conv2", [3, 7])), ("conv1:0-2", ("conv1", [0, 1, 2])), ("my:conv:1", ("my:conv", [1]))],
)
def test_layer_channels_split_at_the_last_colon(text, want):
    assert LAYER_CHANNELS.convert(text, None, None) == want


@pytest.mark.parametrize("text", ["conv2", "conv2:", ":3", "conv2:a", "conv2:1-b"])
def test_bad_layer_channels_are_usage_errors(text):
    with pytest.raises(click.BadParameter, match=repr(text)):
        LAYER_CHANNELS.convert(text, None, None)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("redundant_fraction>0.5", Gate("redundant_fraction", ">", 0.5)),
        (" output_sqnr <= -3e1", Gate("output_sqnr", "<=", -30.0)),
    ],
)
def test_a_gate_parses_to_its_metric_operator_and_limit(text, want):
    assert GATE.convert(text, None, None) == want


@pytest.mark.parametrize("text", ["speed>3", "redundant_fraction=0.5", "accuracy_drop>1.2.3"])
def test_a_bad_gate_is_a_usage_error(text):
    with pytest.raises(click.BadParameter, match=repr(text)):
        GATE.convert(text, None, None)


def test_the_commands_refuse_a_bad_value_in_one_line_before_reading_the_model(tmp_path):
    missing = str(tmp_path / "no-such-model.onnx")  # never read: the usage error comes first
    for args, flag in [
        (["shuffle", missing, "--layer", "0", "--channels", "1-x"], "--channels"),
        (["prune", missing, "--channels", "conv2", "--out", str(tmp_path / "p.onnx")], "--channels"),
        (["audit", missing, "--fail-if", "speed>3"], "--fail-if"),
    ]:
        result = run_cli(*args)
        assert result.exit_code == 2, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"Invalid value for '{flag}'" in lines[0], result.stderr
