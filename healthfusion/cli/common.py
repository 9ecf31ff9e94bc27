"""What every command module shares: the console and the one-line error exit."""

from __future__ import annotations

import os
import sys
import zlib

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from healthfusion.optional import MissingExtraError

#: width of the console when the output is not a terminal (a file, a pipe, a CI log): wide enough that tables are
#: never cut; ``COLUMNS`` still wins when set
PIPE_WIDTH = 400


def make_console() -> Console:
    """The CLI's console: the terminal's width on a terminal; else ``COLUMNS`` or :data:`PIPE_WIDTH`, so tables
    written to a file or pipe are not cut at 80 columns."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=PIPE_WIDTH)


console = make_console()


def parse_options(pairs: list[str] | None) -> dict:
    """``--option KEY=VALUE`` pairs -> a dict of source options; values are read as YAML scalars (``24`` is a
    number, ``true`` a boolean, other text a string). A pair without ``=`` exits with status 2."""
    import yaml

    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail(f"--option expects KEY=VALUE (e.g. --option prediction_time=24); got {pair!r}.")
        try:
            options[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            options[key.strip()] = value
    return options


def fail(exc: Exception | str) -> None:
    """Print one clear error line and exit with status 2 (bad input, not a crash). The message is plain text: square
    brackets in it (``healthfusion[serve]``, a column name) are printed, not read as console markup."""
    if isinstance(exc, UnicodeDecodeError):  # a ValueError that commands catch, but its text names no input
        exc = _describe(exc)
    console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=2)


class ReadErrorsGroup(typer.core.TyperGroup):
    """The root command group: a file that cannot be read or written (``OSError``: permission denied, no such file;
    ``EOFError`` or ``zlib.error`` from a truncated compressed file; ``UnicodeDecodeError``) that no library
    layer turned into a clear error still ends in one line and exit status 2, not a traceback (or click's
    "Aborted." and status 1, which is what it does with an ``EOFError``). Readers name the file and line themselves
    (:func:`healthfusion.data.sources.read_errors.reading`); this is the net below them. A missing optional package
    (:class:`~healthfusion.optional.MissingExtraError`) ends the same way, its line naming the extra to install."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MissingExtraError as exc:
            fail(exc)
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
            fail(_describe(exc))


def _describe(exc: BaseException) -> str:
    """One line for a read error, naming the file when the exception carries it."""
    name = getattr(exc, "filename", None)
    if isinstance(exc, OSError) and name:
        return f"{name}: {exc.strerror or exc}; check the path and its permissions."
    if isinstance(exc, UnicodeDecodeError):
        return f"an input is not UTF-8 text ({exc}); save it as UTF-8."
    if isinstance(exc, (EOFError, zlib.error)):
        return f"an input file is truncated or corrupt ({exc or type(exc).__name__}); copy or download it again."
    return f"could not read an input ({exc})."


# the --set, --out and --quick options every --config command shares (train, transfer, multitask, pretrain)
SET_OPTION = typer.Option(None, "--set", metavar="KEY=VALUE",
                          help="Override a config setting by its dotted key, value read as YAML, e.g. --set "
                               "training.max_epochs=5 --set data.split.seed=1; repeatable, later wins. "
                               "An unknown key is an error naming the closest known one.")
OUT_OPTION = typer.Option(None, "--out", "-o", help="Output folder (relative to the working directory); replaces "
                                                    "the config's out: (which is relative to the config file).")
QUICK_OPTION = typer.Option(False, "--quick", help="Smoke run of the config: few stays, 1-2 epochs, few bootstrap "
                                                   "resamples (the config kind's QUICK settings; --set still wins); "
                                                   "recorded as quick: true in the run folder's config.yaml.")
OVERWRITE_OPTION = typer.Option(False, "--overwrite", help="Clear the non-empty out: folder first, once the data has "
                                                          "been read (default: refuse it, so that two runs never mix).")


def resume_option(what: str):
    """The ``--resume`` option of a checkpointed study command; ``what`` names its unit of work (run, sweep)."""
    return typer.Option(False, "--resume", help=f"Continue an interrupted {what} in the config's out: folder from its "
                                                f"checkpoints (same results as an uninterrupted {what}).")


def run_study(loader, runner, config, overrides: list[str] | None, out, quick: bool, **options):
    """Load a ``--config`` file with ``loader`` (see :func:`load_config`) and run it with
    ``runner(config, console=console, **options)``; a bad config or bad data exits with status 2. Returns what the
    runner returns (the run folder)."""
    try:
        loaded = load_config(loader, config, overrides, out, quick)
        return runner(loaded, console=console, **options)
    except ValueError as exc:
        fail(exc)


def load_config(loader, path, overrides: list[str] | None, out, quick: bool):
    """``loader(path, overrides, out, quick)`` (a workflow's ``load_*_config``), a bad config exiting with status 2;
    a quick run says so."""
    try:
        config = loader(path, overrides or (), out, quick)
    except ValueError as exc:
        fail(exc)
    if getattr(config, "quick", False):
        console.print("[bold yellow]Quick smoke run[/]: few stays, 1-2 epochs, few bootstrap resamples; its numbers "
                      "are not results (config.yaml records quick: true).")
    return config
