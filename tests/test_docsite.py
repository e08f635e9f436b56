"""The site's reference pages are generated from the code (tools/docsite), so they list everything
a user can type or set: each `callstream` command and option, each `Settings` option with its
variable and bounds, each REST path the server answers."""

from __future__ import annotations

from typing import Any

from tools.docsite.cli_reference import HIDDEN, cli_reference, root_command, subcommands
from tools.docsite.rest_reference import openapi_schema, rest_reference
from tools.docsite.settings_reference import settings_reference

from callstream.settings import Settings


def _commands(command: Any, path: str) -> list[tuple[str, Any]]:
    found = [(path, command)]
    for name, sub in subcommands(command).items():
        found += _commands(sub, f"{path} {name}")
    return found


def test_the_cli_reference_has_every_command_and_option() -> None:
    page = cli_reference()
    commands = _commands(root_command(), "callstream")
    assert {"callstream serve", "callstream keys create", "callstream webhooks add"} <= dict(commands).keys()
    for path, command in commands:
        if path != "callstream":
            assert f"## `{path}`" in page
        for param in (p for p in command.params if p.name not in HIDDEN):
            for opt in param.opts if param.param_type_name == "option" else []:
                assert f"`{opt}`" in page, f"{path} {opt}"


def test_the_configuration_reference_has_every_option_its_variable_and_bounds() -> None:
    page = settings_reference()
    for name in Settings.model_fields:
        assert f"| `{name}` | `CALLSTREAM_{name.upper()}` |" in page
    port = next(line for line in page.splitlines() if line.startswith("| `port` "))
    assert "`8080`" in port
    assert "≥ 0, ≤ 65,535" in port


def test_the_rest_reference_has_every_path_the_server_answers() -> None:
    schema = openapi_schema()
    page = rest_reference(schema)
    for path, operations in schema["paths"].items():
        for method in operations:
            assert f"### `{method.upper()} {path}`" in page
    assert "### `POST /v1/calls/{call_id}/events`" in page
