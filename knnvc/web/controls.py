"""The page's controls and the API's form fields, read from ``ConvertOptions`` itself.

Every field of ``knnvc.options.ConvertOptions`` whose type is a number, a flag, a choice (``Literal``, or a string
with a tuple of choices in ``knnvc.options``), a string or a voice (a field marked ``metadata={"kind": "voice"}``)
becomes one ``Control``: the same name in the HTTP form and in the page, its default from the dataclass, its help
from the dataclass docstring's ``Attributes:`` section. A voice field (morphing's second voice) takes the name of a
saved voice. ``HINTS`` only adds ranges and steps for sliders; a field added to ``ConvertOptions`` later appears in
the page and the API without a change here.
Values are checked by ``ConvertOptions`` itself (a ``UsageError`` with one line), never here.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union

from knnvc import options
from knnvc.errors import UsageError
from knnvc.options import MAX_LOUDNESS, MIN_LOUDNESS, ConvertOptions
from knnvc.voice import Voice

VoiceLookup = Callable[[str], Voice]
"""A saved voice by name (``Service.voice``)."""

NONE_WORDS = frozenset({"", "none", "null", "off", "default"})
"""Form values that mean None for an optional field."""

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class Hint:
    """How a number is best shown: a slider from ``low`` to ``high`` by ``step``."""

    low: float
    high: float
    step: float


HINTS: dict[str, Hint] = {
    "k": Hint(1, 64, 1),
    "loudness": Hint(MIN_LOUDNESS, MAX_LOUDNESS, 0.5),
    "strength": Hint(0.0, 2.0, 0.05),
    "match_layer": Hint(1, getattr(options, "MAX_WAVLM_LAYERS", 24), 1),  # WavLM-Large has 24
    "morph": Hint(0.0, 1.0, 0.05),
    "morph_weight": Hint(0.0, 1.0, 0.05),
    "mkl_block": Hint(1, 64, 1),  # K: the authors suggest 2-16; 1 maps each dimension alone
}
"""Slider ranges for fields that have a natural one (ConvertOptions still validates every value)."""

CHOICES = {"knn_weighting": "KNN_WEIGHTINGS", "method": "METHODS"}
"""String fields whose allowed values are a tuple in ``knnvc.options`` (looked up by name: absent, free text)."""


@dataclass(frozen=True)
class Control:
    """One field of ``ConvertOptions`` as a form field.

    Attributes:
        name: the dataclass field name, also the form field and the page control's key.
        kind: ``int``, ``float``, ``bool``, ``str``, ``choice`` or ``voice`` (a saved voice's name).
        default: the dataclass default.
        optional: the field accepts None (a blank form value, or ``none``).
        choices: the allowed values of a ``choice``.
        help: one line from the dataclass docstring.
        hint: a slider range, when one is known.
    """

    name: str
    kind: str
    default: Any
    optional: bool = False
    choices: tuple[str, ...] = ()
    help: str = ""
    hint: Hint | None = None

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")

    def parse(self, text: str) -> Any:
        """A form value -> the field's Python value; ``UsageError`` naming the field when it cannot be read."""
        value = text.strip()
        if self.optional and value.lower() in NONE_WORDS:
            return None
        try:
            if self.kind == "bool":
                if value.lower() in TRUE_WORDS | FALSE_WORDS:
                    return value.lower() in TRUE_WORDS
                raise ValueError(value)
            if self.kind == "int":
                number = float(value)
                if not number.is_integer():
                    raise ValueError(value)
                return int(number)
            if self.kind == "float":
                return float(value)
        except ValueError:
            raise UsageError(f"{self.name} takes {self._wanted()}; got {text!r}") from None
        if self.kind == "voice":
            return value or None
        if self.kind == "choice" and value not in self.choices:
            raise UsageError(f"{self.name} takes one of {', '.join(self.choices)}; got {text!r}")
        return value

    def _wanted(self) -> str:
        words = {"bool": "true or false", "int": "a whole number", "float": "a number"}[self.kind]
        return words + (", or none" if self.optional else "")


def controls(cls: type = ConvertOptions) -> tuple[Control, ...]:
    """Every field of ``cls`` (``ConvertOptions``) that a form can carry, in the dataclass's order."""
    hints = typing.get_type_hints(cls, localns={"Voice": Voice})
    helps = _attribute_help(cls)
    found = []
    for field in dataclasses.fields(cls):
        control = _control(field, hints[field.name], helps.get(field.name, ""))
        if control is not None:
            found.append(control)
    return tuple(found)


def _control(field: dataclasses.Field[Any], annotation: Any, help_text: str) -> Control | None:
    voice = field.metadata.get("kind") == "voice" or Voice in (annotation, *typing.get_args(annotation))
    if voice:  # a saved voice by name: a ``Voice`` field, or one marked so (``ConvertOptions.morph``)
        return Control(field.name, "voice", None, True, help=help_text)
    args = typing.get_args(annotation)
    optional = typing.get_origin(annotation) in (Union, types.UnionType) and type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return None
        annotation = rest[0]
    default = field.default if field.default is not dataclasses.MISSING else None
    if typing.get_origin(annotation) is Literal:
        choices = tuple(str(a) for a in typing.get_args(annotation))
        return Control(field.name, "choice", default, optional, choices, help_text)
    listed = getattr(options, CHOICES.get(field.name, ""), None)
    if annotation is str and isinstance(listed, tuple):
        return Control(field.name, "choice", default, optional, tuple(str(c) for c in listed), help_text)
    kinds = {bool: "bool", int: "int", float: "float", str: "str"}
    kind = kinds.get(annotation)
    if kind is None:  # a structured field (a list, a tensor): not a form control
        return None
    return Control(field.name, kind, default, optional, help=help_text, hint=HINTS.get(field.name))


def _attribute_help(cls: type) -> dict[str, str]:
    """``name: text`` entries of a Google-style ``Attributes:`` section, each joined onto one line."""
    doc = inspect.getdoc(cls) or ""
    section = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    helps: dict[str, str] = {}
    name = None
    for line in section.splitlines():
        match = re.match(r"^\s{4}(\w+):\s*(.*)$", line)
        if match:
            name = match.group(1)
            helps[name] = match.group(2).strip().replace("``", "")
        elif name and line.startswith(" " * 8):
            helps[name] += " " + line.strip().replace("``", "")
        elif line.strip():
            break
    return helps


def options_from_form(form: Mapping[str, str], voices: VoiceLookup, *, cls: type = ConvertOptions) -> ConvertOptions:
    """``ConvertOptions`` from form fields named as its fields; absent ones keep their defaults.

    Raises:
        UsageError: an unknown field, a value that cannot be read, or one that ``ConvertOptions`` refuses.
        VoiceError: a voice field naming no saved voice.
    """
    known = {c.name: c for c in controls(cls)}
    unknown = sorted(set(form) - set(known))
    if unknown:
        raise UsageError(f"unknown field {unknown[0]!r}; the controls are {', '.join(known)}")
    values = {name: known[name].parse(text) for name, text in form.items()}
    return _build(cls, known, values, voices)


def options_from_values(
    values: Mapping[str, Any], voices: VoiceLookup, *, cls: type = ConvertOptions
) -> ConvertOptions:
    """``ConvertOptions`` from the page's control values: text is parsed as a form field, numbers checked."""
    known = {c.name: c for c in controls(cls)}
    cleaned: dict[str, Any] = {}
    for name, value in values.items():
        control = known[name]
        if isinstance(value, str) and control.kind not in ("str", "choice"):
            cleaned[name] = control.parse(value)
        elif value is None and not control.optional:
            raise UsageError(f"{name} needs a value")
        elif control.kind == "int" and value is not None:
            if float(value) != int(float(value)):
                raise UsageError(f"{name} takes a whole number; got {value}")
            cleaned[name] = int(float(value))
        elif control.kind == "float" and value is not None:
            cleaned[name] = float(value)
        else:
            cleaned[name] = value
    return _build(cls, known, cleaned, voices)


def _build(cls: type, known: dict[str, Control], values: dict[str, Any], voices: VoiceLookup) -> Any:
    """The dataclass from parsed values; voice fields' names become the saved voices."""
    resolved = {
        name: voices(value) if known[name].kind == "voice" and value is not None else value
        for name, value in values.items()
    }
    return cls(**resolved)
