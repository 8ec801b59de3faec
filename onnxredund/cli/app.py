"""The click group, its error boundary and the console's logging.

User mistakes (:class:`OnnxRedundError`, bad flags) print one line and exit with status 2; Ctrl-C and
SIGTERM stop the command with 130 and 143 (:mod:`onnxredund.interrupts`); anything else is a bug and keeps
its traceback. The library names its parameters in its messages (`` `round_to` ``); the console shows the flag
that sets each (``--round-to``, :func:`as_flags`).
"""

from __future__ import annotations

import logging
import re
import sys

import click

from onnxredund import __version__
from onnxredund.errors import OnnxRedundError
from onnxredund.interrupts import exit_status, signal_behind, signals_interrupt

__all__ = ["as_flags", "bar_shown", "command_logging", "main", "setup_logging"]

log = logging.getLogger("onnxredund")

#: the library's parameters whose flag is not their name with dashes
FLAGS = {
    "classifier": "--classifier-output",
    "at": "--impulse-at",
    "address": "--ray-address",
    "input_values": "--input-value",
}
_PARAMETER = re.compile(r"(?<!`)`([a-z][a-z0-9_]*)`(?!`)")


def as_flags(message: str) -> str:
    """A library message as the console says it: each parameter it names (`` `round_to` ``) as its flag."""
    return _PARAMETER.sub(lambda m: FLAGS.get(m[1], "--" + m[1].replace("_", "-")), message)


class _Flags(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return as_flags(super().format(record))


class _Group(click.Group):
    """Turns user mistakes into one line on stderr and exit status 2, never a traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            with signals_interrupt():
                return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except OnnxRedundError as e:
            click.echo(f"onnxredund: error: {as_flags(str(e))}", err=True)
            sys.exit(2)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help())
            sys.exit(2)
        except click.ClickException as e:
            click.echo(f"onnxredund: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except (click.exceptions.Abort, KeyboardInterrupt) as e:  # click turns Ctrl-C into Abort
            click.echo("onnxredund: interrupted", err=True)
            sys.exit(exit_status(e))
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except BrokenPipeError:
            sys.exit(1)
        except MemoryError as e:  # what was finished is kept (checkpoints); the batch is what takes the memory
            click.echo(f"onnxredund: error: out of memory ({e}); pass a smaller --batch-size", err=True)
            sys.exit(2)
        except Exception as e:  # a library's cleanup that failed as a signal passed through it: still a stop
            stop = signal_behind(e)
            if stop is None:
                raise
            click.echo("onnxredund: interrupted", err=True)
            sys.exit(exit_status(stop))


class _ClearsBars(logging.StreamHandler):
    """Log lines on stderr that first clear a progress bar's line, so a message never runs into a bar
    (the bar draws itself again on its next update)."""

    bar_active = False

    def emit(self, record: logging.LogRecord) -> None:
        if _ClearsBars.bar_active and self.stream.isatty():
            self.stream.write("\r\x1b[K")
        super().emit(record)


def bar_shown(active: bool) -> None:
    """Tell the log handler whether a progress bar holds the terminal's last line."""
    _ClearsBars.bar_active = active


def setup_logging(verbose: int, quiet: bool) -> None:
    """Log lines of the package on stderr: errors only with ``quiet``, INFO with -v, DEBUG with -vv."""
    if quiet:
        level = logging.ERROR
    else:
        level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    handler = _ClearsBars(sys.stderr)
    handler.setFormatter(_Flags("onnxredund: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def command_logging(ctx: click.Context, verbose: int, quiet: bool) -> bool:
    """-v/-q given after the command name count with those before it; returns whether to be quiet."""
    verbose += ctx.obj["verbose"]
    quiet = quiet or ctx.obj["quiet"]
    setup_logging(verbose, quiet)
    return quiet


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="onnxredund")
@click.option("-v", "--verbose", count=True, help="More log lines (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors; no progress bars.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Find redundancy in a convolutional network from its ONNX file.

    Channel and pixel shuffling at any conv layer, unit impulse responses compared by
    normalized cross-correlation, and a report that puts them together.
    """
    setup_logging(verbose, quiet)
    ctx.obj = {"quiet": quiet, "verbose": verbose}
