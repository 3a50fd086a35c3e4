"""The job form as the service checks it: each text field against its grammar (runtime/options.py's table, the
same grammar the OpenAPI document declares through runtime/service/contract.py), so that a value the document
allows is accepted and one it forbids is refused (422), before Settings.check has the last word.
"""
from __future__ import annotations

import re

from m3ddm.errors import InputError
from runtime.options import FIELDS, FORM_FIELDS, Field, settings_from_form  # noqa: F401 (FIELDS ...: the API)


def check_form(form: dict) -> None:
    """Refuse a form the document does not allow: an unknown field, or a value outside its field's grammar."""
    unknown = sorted(set(form) - set(FORM_FIELDS))
    if unknown:
        raise InputError(f"unknown field(s): {', '.join(unknown)}")
    for name, value in form.items():
        field, text = FIELDS[name], str(value)
        if not _allowed(field.schema, text):
            shown = text if len(text) <= 40 else text[:40] + "..."
            raise InputError(f"{name}: {shown!r} is not {_expected(field)} ({field.meaning})")


def _allowed(schema: dict, value: str) -> bool:
    if schema["type"] == "integer":
        return re.fullmatch(r"[0-9]{1,19}", value) is not None and schema["minimum"] <= int(value) <= schema["maximum"]
    if "enum" in schema:
        return value in schema["enum"]
    return re.fullmatch(schema["pattern"], value) is not None


def _expected(field: Field) -> str:
    if field.schema["type"] == "integer":
        return f"an integer from {field.schema['minimum']} to {field.schema['maximum']}"
    if "enum" in field.schema:
        return "one of " + ", ".join(field.schema["enum"])
    return f"of the form {field.example}"
