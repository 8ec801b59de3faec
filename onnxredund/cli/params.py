"""Click parameter types for the values the commands spell in text: channel lists, LAYER:CHANNELS and gates.

Each parses its text into what the library takes (a list of channel indices, a (layer, channels) pair, a
:class:`~onnxredund.analyses.gates.Gate`); a malformed value is click's one-line usage error, exit 2, before
anything is loaded. What needs the model (does the channel exist, can the data give the gate's metric) is
checked by the library.
"""

from __future__ import annotations

import re

import click

from onnxredund.analyses.gates import GATE_METRICS, Gate

__all__ = ["CHANNEL_LIST", "GATE", "LAYER_CHANNELS", "channel_numbers"]


def channel_numbers(text: str) -> list[int]:
    """'0,3,5-9' -> [0, 3, 5, 6, 7, 8, 9], each channel once, in the order written.

    Raises:
        ValueError: a part that is not a channel or a range a-b, or no channel at all.
    """
    out: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(f"{part.strip()!r} is not a channel or a range a-b")
        out += [k for k in (range(int(lo), int(hi) + 1) if dash else [int(lo)]) if k not in out]
    if not out:
        raise ValueError("no channel in it")
    return out


class _Text(click.ParamType):
    """A value written as text: :meth:`parse` makes it what the library takes, or raises ValueError saying why
    (click's usage error, naming the option and the value)."""

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            return self.parse(value)
        except ValueError as e:
            self.fail(f"{value!r}: {e}", param, ctx)

    def parse(self, text: str):
        raise NotImplementedError


class _ChannelList(_Text):
    """'0,3,5-9' -> [0, 3, 5, ..., 9]; 'all' -> None (every channel)."""

    name = "CHANNELS"

    def parse(self, text: str) -> list[int] | None:
        if text.strip() in ("", "all"):
            return None
        try:
            return channel_numbers(text)
        except ValueError as e:
            raise ValueError(f"{e}; write e.g. 0,3,5-9") from None


class _LayerChannels(_Text):
    """'conv2:3,7' -> ('conv2', [3, 7])."""

    name = "LAYER:CHANNELS"

    def parse(self, text: str) -> tuple[str, list[int]]:
        layer, sep, channels = text.rpartition(":")
        if not sep or not layer or not channels:
            raise ValueError("write LAYER:CHANNELS, e.g. conv2:3,7 or conv2:0-3")
        return layer, channel_numbers(channels)


class _GateType(_Text):
    """'redundant_fraction>0.5' -> Gate('redundant_fraction', '>', 0.5)."""

    name = "GATE"

    def parse(self, text: str) -> Gate:
        m = re.fullmatch(r"\s*([a-z0-9_]+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*", text)
        if not m or m.group(1) not in GATE_METRICS:
            raise ValueError(f"use METRIC>VALUE with METRIC one of {', '.join(GATE_METRICS)}")
        try:
            return Gate(m.group(1), m.group(2), float(m.group(3)))
        except ValueError:
            raise ValueError(f"{m.group(3)!r} is not a number") from None


CHANNEL_LIST = _ChannelList()
LAYER_CHANNELS = _LayerChannels()
GATE = _GateType()
