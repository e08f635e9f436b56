"""The configuration reference, read from `callstream.settings.Settings`: each option, its
environment variable, its type, its default and its bounds, as pydantic validates them."""

from __future__ import annotations

from typing import Any

import annotated_types as at
from pydantic.fields import FieldInfo

from callstream.settings import Settings

_BOUNDS: tuple[tuple[type, str, str], ...] = (
    (at.Ge, "ge", "≥"),
    (at.Gt, "gt", ">"),
    (at.Le, "le", "≤"),
    (at.Lt, "lt", "<"),
    (at.MinLen, "min_length", "length ≥"),
    (at.MaxLen, "max_length", "length ≤"),
)


def settings_reference() -> str:
    """A Markdown table of every `Settings` field."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    lines = ["| option | environment | type | default | bounds | meaning |", "|---|---|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        lines.append(
            f"| `{name}` | `{prefix}{name.upper()}` | {_type(field)} | {_default(field)} | "
            f"{_bounds(field)} | {_cell(field.description or '')} |"
        )
    return "\n".join(lines) + "\n"


def _type(field: FieldInfo) -> str:
    text = str(field.annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return _cell(f"`{text}`")


def _default(field: FieldInfo) -> str:
    value: Any = field.get_default(call_default_factory=True)
    if value is None or value == []:
        return "unset"
    return _cell(f"`{value}`")


def _bounds(field: FieldInfo) -> str:
    """Lower bounds before upper ones, whether a bound comes from the type (`PositiveFloat`) or
    from `Field`."""
    found = [
        f"{sign} {getattr(constraint, attribute):,}"
        for kind, attribute, sign in _BOUNDS
        for constraint in field.metadata
        if isinstance(constraint, kind)
    ]
    for constraint in field.metadata:
        pattern = getattr(constraint, "pattern", None)
        if pattern:
            found.append(f"matches `{pattern}`")
    return _cell(", ".join(found))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
