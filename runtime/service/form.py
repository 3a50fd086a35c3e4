"""A job's options as the service takes them: the text fields of its form, each with a grammar that is both what
the OpenAPI document declares (runtime/service/contract.py) and what is checked, so that a value the document
allows is accepted and one it forbids is refused (422), before Settings.check has the last word.

The grammar is the command line's, bounded: at most 8 ratios, 8 strides and 7-digit padding; steps from 2
(PNDM, the default, needs two); every number written plainly (no exponents, signs or spaces).
"""
from __future__ import annotations

import argparse
import re
from typing import NamedTuple

from m3ddm.errors import InputError
from runtime import cli
from runtime.samplers import MAX_STEPS, SAMPLERS
from runtime.settings import MAX_SEED, Settings

_POSITIVE = r"(?:[1-9][0-9]{0,5}(?:\.[0-9]{1,6})?|0\.[0-9]{0,5}[1-9][0-9]{0,5})"
_RATIO = f"{_POSITIVE}:{_POSITIVE}"
_SCALE = r"(?:50(?:\.0{1,6})?|[1-4]?[0-9](?:\.[0-9]{1,6})?)"  # 0 to 50: MAX_GUIDANCE


class Field(NamedTuple):
    schema: dict  # as the OpenAPI document declares it (a pattern is anchored: it matches the whole value)
    meaning: str
    example: str = ""


FIELDS = {
    "ratio": Field({"type": "string", "pattern": f"^{_RATIO}(?:,{_RATIO}){{0,7}}$", "default": "9:16"},
                   "target ratios W:H, one output each (a ratio given twice is one output)", "9:16 or 9:16,1:1"),
    "pad": Field({"type": "string", "pattern": r"^[0-9]{1,7}(?:,[0-9]{1,7}){3}$"},
                 "top,right,bottom,left padding in source pixels, one output 'pad', instead of the ratios",
                 "0,64,0,64"),
    "steps": Field({"type": "integer", "minimum": 2, "maximum": MAX_STEPS},
                   "sampling steps (default: the sampler's, 50; 20 for dpmpp)"),
    "seed": Field({"type": "integer", "minimum": 0, "maximum": MAX_SEED, "default": 6}, "the seed of all randomness"),
    "sampler": Field({"type": "string", "enum": list(SAMPLERS), "default": "pndm"},
                     "pndm reproduces the official trajectory"),
    "strides": Field({"type": "string", "pattern": r"^(?:[1-9][0-9]{0,3},){0,7}1$"},
                     "coarse-to-fine strides ending in 1 (default 15,5,1; 1 under 50 frames)", "15,5,1"),
    "guidance": Field({"type": "string", "pattern": f"^{_SCALE},{_SCALE}$"},
                      "the two guidance scales s1 (local), s2 (global), 0 to 50 (default 2,4)", "2,4"),
}
FORM_FIELDS = tuple(FIELDS)  # a job's options, as text


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


def settings_from_form(form: dict) -> Settings:
    """A job's Settings from its text fields (FORM_FIELDS, parsed as the command line parses them), checked."""
    def numbers(name, kind, n=None):
        text = form.get(name)
        if text in (None, ""):
            return None
        try:
            return tuple(cli.csv(kind, n)(text))
        except argparse.ArgumentTypeError as exc:
            raise InputError(f"{name}: {exc}") from None

    steps, seed = numbers("steps", int, 1), numbers("seed", int, 1)
    pad = numbers("pad", int, 4)
    s = Settings.build(ratio=() if pad else (form.get("ratio") or "9:16"), pad=pad,
                       steps=steps[0] if steps else None, seed=seed[0] if seed else None,
                       sampler=form.get("sampler") or None, strides=numbers("strides", int),
                       guidance=numbers("guidance", float, 2))
    s.check()
    return s
