"""Exception classes shared by every layer.

A user's mistake raises :class:`ParameterError`, whose message names the field, the
value and what is allowed; the CLI prints it without a traceback. Nothing here ever
carries key material: callers pass field names and public values only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any


class CorridorError(Exception):
    """Base class of every error Corridor raises on purpose."""


class ParameterError(CorridorError, ValueError):
    """A parameter is outside what is allowed.

    The message always has the form ``<field> = <value>: <allowed>[ (<hint>)]``.
    """

    def __init__(self, field: str, value: Any, allowed: str, hint: str | None = None) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        self.hint = hint
        message = f"{field} = {value!r}: {allowed}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


@contextmanager
def fields_renamed(names: Mapping[str, str]) -> Iterator[None]:
    """A :class:`ParameterError` about a field named in ``names`` re-raised under the
    name the user knows it by: a command's option (``--distance-km`` for ``length_km``)
    or its place in a file (``links.link-ab.preset`` for ``preset``)."""
    try:
        yield
    except ParameterError as exc:
        if exc.field not in names:
            raise
        raise ParameterError(names[exc.field], exc.value, exc.allowed, exc.hint) from None


class ProtocolAbort(CorridorError):
    """A distillation stage refused a block; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class AuthenticationFailure(ProtocolAbort):
    """A classical message failed authentication (tampered, replayed or reordered)."""

    def __init__(self, detail: str) -> None:
        super().__init__("authentication_failed", detail)
