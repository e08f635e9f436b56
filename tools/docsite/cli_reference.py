"""The command-line reference, read from the typer app itself: every command, argument and option
with its help, default and environment variable, so the page cannot drift from `callstream --help`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer

from callstream.cli import app

# typer's own shell-completion options: not callstream's
HIDDEN = {"install_completion", "show_completion"}


def root_command() -> Any:
    """The `callstream` command as typer builds it (a group of commands, each with its params)."""
    return typer.main.get_command(app)


def cli_reference() -> str:
    """Markdown for every command of `callstream`, in the app's own order."""
    return "\n".join(_command(root_command(), None, "callstream"))


def subcommands(command: Any) -> dict[str, Any]:
    """A group's visible commands by name (none for a plain command)."""
    found = getattr(command, "commands", {})
    return {name: sub for name, sub in found.items() if not sub.hidden}


def _command(command: Any, parent: Any, path: str) -> Iterator[str]:
    context = command.context_class(command, info_name=path.rsplit(" ", 1)[-1], parent=parent)
    if parent is not None:
        yield f"## `{path}`\n"
    if command.help:
        yield _first_paragraph(command.help) + "\n"
    yield f"```text\n{command.get_usage(context)}\n```\n"
    rows = [_row(param) for param in command.params if param.name not in HIDDEN and not getattr(param, "hidden", False)]
    if rows:
        yield "| argument or option | help | default | environment |"
        yield "|---|---|---|---|"
        yield from rows
        yield ""
    for name, sub in subcommands(command).items():
        yield from _command(sub, context, f"{path} {name}")


def _row(param: Any) -> str:
    if param.param_type_name == "argument":
        names = f"`{(param.metavar or param.name).upper()}`" + (" (several)" if param.nargs == -1 else "")
    else:
        names = ", ".join(f"`{name}`" for name in [*param.opts, *param.secondary_opts])
    help_text = _cell(getattr(param, "help", None) or "")
    if param.required:
        default = "required"
    elif param.default in (None, False, ()) or callable(param.default):
        default = ""
    else:
        default = f"`{param.default}`"
    envvar = param.envvar if isinstance(param.envvar, str) else ", ".join(param.envvar or ())
    return f"| {names} | {help_text} | {_cell(default)} | {f'`{envvar}`' if envvar else ''} |"


def _first_paragraph(text: str) -> str:
    return text.strip().split("\n\n", 1)[0].replace("\n", " ")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
