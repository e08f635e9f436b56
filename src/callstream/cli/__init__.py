"""The `callstream` command: one module a command group. Every option also reads a `CALLSTREAM_*`
environment variable."""

from __future__ import annotations

import typer

from callstream.cli import calls, control, keys, live, serve, token, webhooks

__all__ = ["app", "main"]

app = typer.Typer(
    help="callstream: live events of voice calls.", no_args_is_help=True, pretty_exceptions_enable=False
)
app.add_typer(keys.app, name="keys")
for command in (
    serve.serve,
    serve.demo,
    keys.login,
    token.token,
    live.simulate,
    live.tail,
    control.control,
    serve.migrate,
):
    app.command()(command)
app.add_typer(webhooks.app, name="webhooks")
app.add_typer(calls.app, name="calls")


def main() -> None:
    app()
