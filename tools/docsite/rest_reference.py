"""The REST reference, read from the app's own OpenAPI schema (what `/openapi.json` serves): every
path and method with its parameters, request body and answers, grouped by tag."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

from callstream.server.app import create_app
from callstream.settings import Settings

METHODS = ("get", "post", "put", "patch", "delete")


def openapi_schema() -> dict[str, Any]:
    """The schema of an app built on default settings (nothing is started, nothing is stored)."""
    with tempfile.TemporaryDirectory() as data_dir:
        return create_app(Settings(data_dir=data_dir)).openapi()


def rest_reference(schema: dict[str, Any] | None = None) -> str:
    schema = schema or openapi_schema()
    by_tag: dict[str, list[str]] = {}
    for path, operations in schema.get("paths", {}).items():
        for method in METHODS:
            operation = operations.get(method)
            if operation is not None:
                tag = (operation.get("tags") or ["other"])[0]
                by_tag.setdefault(tag, []).append("\n".join(_operation(method, path, operation)))
    parts = []
    for tag, operations in by_tag.items():
        parts.append(f"## {tag}\n")
        parts.extend(operations)
    return "\n".join(parts)


def _operation(method: str, path: str, operation: dict[str, Any]) -> Iterator[str]:
    yield f"### `{method.upper()} {path}`\n"
    if operation.get("summary"):
        yield f"**{operation['summary']}**\n"
    if operation.get("description"):
        yield operation["description"].strip() + "\n"
    parameters = operation.get("parameters", [])
    if parameters:
        yield "| parameter | in | type | required | meaning |"
        yield "|---|---|---|---|---|"
        for parameter in parameters:
            schema = parameter.get("schema", {})
            yield (
                f"| `{parameter['name']}` | {parameter['in']} | {_cell(_type(schema))} | "
                f"{'yes' if parameter.get('required') else ''} | {_cell(parameter.get('description', ''))} |"
            )
        yield ""
    body = operation.get("requestBody", {}).get("content", {})
    for media, content in body.items():
        yield f"Request body ({media}): {_type(content.get('schema', {}))}\n"
    answers = operation.get("responses", {})
    for status, answer in answers.items():
        if status.startswith("2"):
            yield f"Answer {status}: {answer.get('description', '')}{_body(answer)}\n"
    errors = [status for status in answers if not status.startswith("2")]
    if errors:
        yield f"Errors: {', '.join(errors)} ([what each means](errors.md)).\n"


def _body(answer: dict[str, Any]) -> str:
    schema = answer.get("content", {}).get("application/json", {}).get("schema")
    return f" ({_type(schema)})" if schema else ""


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return f"`{schema['$ref'].rsplit('/', 1)[-1]}`"
    if "anyOf" in schema:
        return " or ".join(_type(option) for option in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list of {_type(schema.get('items', {}))}"
    return f"`{schema.get('type', 'any')}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
