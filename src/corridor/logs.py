"""Structured logging for the whole project, and the rule that keeps key material out.

This module owns two things:

- :func:`configure_logging`: one call (made by the ``corridor`` entry points) that sends
  every log record, Corridor's and its libraries' (uvicorn, httpx), to stderr, either as
  one JSON object per line or as plain text, through a filter that redacts anything
  that could be key material.
- :func:`public_field_violation`, the *public field rule* shared with the audit log
  (:mod:`corridor.kms.audit` refuses an event that breaks it, fail closed) and with the
  metrics (label values): a field is public only if its **value** and its **name** pass.

Value rule: only ``None``, ``bool``, integers, finite floats, ``str``, and lists,
tuples and ``str``-keyed dicts of these (dict keys obey the name rule too) are public.
``bytes``, ``bytearray``, ``memoryview``, numpy arrays and any other object are refused:
key material travels as bytes or bit arrays, public values never do.

Name rule: the name is split into lower-case tokens at ``_ - .``, spaces and camelCase
boundaries (``keyMaterial`` -> ``key``, ``material``). A name holding a *sensitive*
token (:data:`SENSITIVE_TOKENS`: key, keys, kek, psk, secret, secrets, password,
passphrase, passwd, private, privkey, material, credential, credentials, token) is
refused unless a token after its last sensitive token names a public descriptor of the
secret rather than the secret itself (the first such token decides):

- ``id``, ``ids``, ``uuid``: the value must be a ``str`` or a list of ``str``
  (``key_id``, ``key_ids``, ``key_ID``);
- ``size``, ``bits``, ``bytes``, ``count``, ``length``, ``offset``, ``rate``, ``ratio``,
  ``number``: the value must be a single number (``key_size``, ``stored_key_count``,
  ``secret_bits``).

So ``key``, ``keys``, ``key_material``, ``secret``, ``kek``, ``aes_key``, ``key_b64``,
``private_key_pem`` and ``key_bits=[0, 1, ...]`` are refused; ``key_ids``, ``size_bits``,
``key_size=256``, ``secret_bits=4096`` and ``secret_key_rate_bits_per_pulse=1e-4``
pass. The rule cannot see a key hidden in an innocently named string
(``note="q1w2..."``); callers must not do that, and reviewers look for it.
"""

from __future__ import annotations

import datetime as dt
import json as _json
import logging
import math
import numbers
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from corridor.errors import CorridorError, ParameterError

SENSITIVE_TOKENS = frozenset({
    "key", "keys", "kek", "psk", "secret", "secrets", "password", "passphrase", "passwd",
    "private", "privkey", "material", "credential", "credentials", "token",
})
"""Name tokens that mark a field as (possibly) key material."""

ID_SUFFIXES = frozenset({"id", "ids", "uuid"})
"""Last tokens that make a sensitive name an identifier (value: str or list of str)."""

NUMBER_SUFFIXES = frozenset({
    "size", "bits", "bytes", "count", "length", "offset", "rate", "ratio", "number",
})
"""Last tokens that make a sensitive name a size or count (value: one number)."""

REDACTED = "[REDACTED]"

_TOKEN_SPLIT = re.compile(r"[_\-.\s]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_MAX_DEPTH = 8


class KeyMaterialRefused(CorridorError, ValueError):
    """An event or log field broke the public field rule.

    The message names the field and the rule it broke, never the value.
    """

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"field {field!r} refused: {rule} (events and logs carry public "
                         f"values only; see corridor.logs)")


def name_tokens(name: str) -> list[str]:
    """Split a field name into lower-case tokens (``keyMaterial_b64`` -> key, material, b64)."""
    return [token.lower() for part in _TOKEN_SPLIT.split(name)
            for token in _CAMEL.split(part) if token]


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_id_value(value: Any) -> bool:
    if isinstance(value, str):
        return True
    if type(value) in (list, tuple) and set(map(type, value)) <= {str}:
        return True  # the common case, in one pass over the types
    return isinstance(value, list | tuple) and all(isinstance(item, str) for item in value)


def _name_violation(name: str, value: Any) -> str | None:
    tokens = name_tokens(name)
    if not tokens:
        return "empty field name"
    sensitive = [i for i, token in enumerate(tokens) if token in SENSITIVE_TOKENS]
    if not sensitive:
        return None
    descriptor = next((token for token in tokens[sensitive[-1] + 1:]
                       if token in ID_SUFFIXES or token in NUMBER_SUFFIXES), None)
    if descriptor in ID_SUFFIXES:
        return None if _is_id_value(value) else (
            "a key/secret identifier must be a string or a list of strings")
    if descriptor in NUMBER_SUFFIXES:
        return None if _is_number(value) else "a key/secret size or count must be a number"
    return "the name marks key material (key, secret, kek, material, ...)"


# Element types of a list or tuple that are public whatever their value: a long list of
# key IDs or byte offsets is checked in one pass over its types, not element by element.
_PLAIN_ITEM_TYPES = frozenset({str, int, bool, type(None)})


def _value_violation(value: Any, depth: int) -> tuple[str, str] | None:
    """(relative field path, rule) of the first non-public value inside ``value``."""
    if value is None or isinstance(value, bool | str):
        return None
    if type(value) in (list, tuple) and set(map(type, value)) <= _PLAIN_ITEM_TYPES:
        return None if depth < _MAX_DEPTH else ("", f"nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, numbers.Integral):
        return None
    if isinstance(value, numbers.Real):
        return None if math.isfinite(float(value)) else ("", "a non-finite number")
    if depth >= _MAX_DEPTH:
        return ("", f"nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _value_violation(item, depth + 1)
            if found is not None:
                return (f"[{index}]{found[0]}", found[1])
        return None
    if isinstance(value, Mapping):
        for sub_name, item in value.items():
            if not isinstance(sub_name, str):
                return ("", "a dict key that is not a string")
            found = public_field_violation(sub_name, item, _depth=depth + 1)
            if found is not None:
                return (f".{found[0]}", found[1])
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return ("", "a bytes value (key material travels as bytes)")
    return ("", f"a {type(value).__name__} value (only None, bool, numbers, str, "
                f"lists and dicts are public)")


def public_field_violation(name: str, value: Any, *, _depth: int = 0) -> tuple[str, str] | None:
    """Check one field against the public field rule (module docstring).

    Returns ``None`` when the field is public, else ``(field path, rule broken)``; the
    result never contains the value.
    """
    rule = _name_violation(name, value)
    if rule is not None:
        return (name, rule)
    found = _value_violation(value, _depth)
    if found is not None:
        return (f"{name}{found[0]}", found[1])
    return None


def check_public_fields(fields: Mapping[str, Any]) -> None:
    """Raise :class:`KeyMaterialRefused` for the first field that breaks the rule."""
    for name, value in fields.items():
        found = public_field_violation(name, value)
        if found is not None:
            raise KeyMaterialRefused(*found)


def to_public_json(value: Any) -> Any:
    """``value`` (already checked) with numpy scalars and tuples turned into JSON types."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, list | tuple):
        if set(map(type, value)) <= _PLAIN_ITEM_TYPES:
            return list(value)
        return [to_public_json(item) for item in value]
    if isinstance(value, Mapping):
        return {str(k): to_public_json(v) for k, v in value.items()}
    raise TypeError(f"not a public value: {type(value).__name__}")


# --- logging ---------------------------------------------------------------------

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


def _redact(name: str, value: Any) -> Any:
    if public_field_violation(name, value) is not None:
        return REDACTED
    return to_public_json(value)


def _redact_arg(value: Any) -> Any:
    found = _value_violation(value, 0)
    if found is None:
        return value
    return REDACTED


class RedactKeyMaterial(logging.Filter):
    """Redacts every ``extra=`` field and ``%``-argument that breaks the public field rule.

    Fields are replaced by ``"[REDACTED]"`` rather than dropping the record: a log line
    must never fail, and the redaction itself shows that someone tried.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str):
            record.msg = _redact_arg(record.msg)
        for name in list(vars(record)):
            if name in _STANDARD_ATTRS:
                continue
            setattr(record, name, _redact(name, getattr(record, name)))
        if isinstance(record.args, Mapping):
            record.args = {k: _redact(str(k), v) for k, v in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(arg) for arg in record.args)
        return True


def record_extras(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record (already redacted by :class:`RedactKeyMaterial`)."""
    return {name: value for name, value in vars(record).items()
            if name not in _STANDARD_ATTRS}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record_extras(record).items():
            entry.setdefault(name, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = record_extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


_LEVELS = ("debug", "info", "warning", "error", "critical")


def configure_logging(level: str | int = "info", json: bool = True,
                      stream: TextIO | None = None) -> logging.Handler:
    """Send all log records to ``stream`` (stderr) as JSON lines or text, redacted.

    Replaces the handler a previous call installed on the root logger (calling it twice
    never doubles lines) and returns the new handler. ``level`` is a name from
    debug/info/warning/error/critical or a ``logging`` level number.
    """
    if isinstance(level, str):
        if level.lower() not in _LEVELS:
            raise ParameterError("level", level, f"one of {', '.join(_LEVELS)}")
        level_no = getattr(logging, level.upper())
    elif isinstance(level, int) and not isinstance(level, bool) and level >= 0:
        level_no = level
    else:
        raise ParameterError("level", level, "a level name or a non-negative int")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    handler.addFilter(RedactKeyMaterial())
    handler.set_name("corridor")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "corridor"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_no)
    return handler
