"""Words in what is printed: "1 layer", "3 layers"; names short enough for a table."""

from __future__ import annotations

import re

__all__ = [
    "NAME_WIDTH",
    "NOT_MEASURED",
    "ONE_CHANNEL_NOTE",
    "RESUMED_NOTE",
    "UNDECIDED_NOTE",
    "counted",
    "decided",
    "images_each",
    "name_list",
    "short_name",
    "short_names_in",
]

NAME_WIDTH = 40  # characters of a name in a console table
#: how an audit's note on a sweep that left channels undecided ends (the console and the report group them)
UNDECIDED_NOTE = "undecided, counted as not cheap"
#: how an audit's note on a layer of one input channel ends, after its name (the console groups them)
NOT_MEASURED = "; not measured: "  # an interrupted audit's note: then "LAYER MODE, LAYER MODE" and RESUMED_NOTE
RESUMED_NOTE = " (a resumed audit continues from the checkpoints)"
ONE_CHANNEL_NOTE = "is not shuffled: it reads one input channel, and perturbing that perturbs the whole input"


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, the noun in the plural unless ``n`` is 1 (``plural`` where adding "s" is wrong)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def decided(counts: dict[str, int]) -> str:
    """A sweep's decision counts: "51 cheap, 3 costly, 6 undecided"."""
    return f"{counts['cheap']} cheap, {counts['costly']} costly, {counts['undecided']} undecided"


def images_each(images) -> str:
    """The images a sequential sweep's channels were measured on: "256-5000 images each" ("1024 images each")."""
    low, high = int(min(images)), int(max(images))
    return f"{low}-{high} images each" if low != high else f"{high} images each"


def short_name(name: str, width: int = NAME_WIDTH) -> str:
    """A node's name as a table shows it: of the names tf2onnx joins with ';' (everything fused into a conv:
    ``model_1/re_lu_3/Relu;...;model_1/conv2d_3/Conv2D``) the conv's own, and past ``width`` characters its end
    (the part that tells layers apart), after '...'. JSON keeps the full name."""
    parts = [p for p in name.split(";") if p]
    if len(parts) > 1:  # the part whose op (its last segment) is a conv, else one that mentions a conv
        own = [p for p in parts if "conv" in p.rsplit("/", 1)[-1].lower()] or [p for p in parts if "conv" in p.lower()]
        name = (own or parts)[0]
    return name if len(name) <= width else "..." + name[-(width - 3) :]


def name_list(names: list[str], most: int = 3) -> str:
    """Names as a table's cell shows them (as :func:`short_name` does): up to ``most`` all of them, past that the
    first and how many more (nine convs reading one shared kernel make one group: a cell of all nine was 300
    characters wide)."""
    if len(names) <= most:
        return ", ".join(map(short_name, names))
    return f"{short_name(names[0])} and {len(names) - 1} more"


def short_names_in(text: str, width: int = NAME_WIDTH) -> str:
    """``text`` (a reason in a table) with each quoted name longer than ``width`` as :func:`short_name` shows it."""

    def shorten(quoted: re.Match) -> str:
        name = quoted.group(1)
        return f"'{short_name(name, width)}'" if len(name) > width else quoted.group(0)

    return re.sub(r"'([^'\s]+)'", shorten, text)
