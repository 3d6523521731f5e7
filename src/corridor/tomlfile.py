"""Reading a TOML file a user names, with one-line errors.

:func:`read_toml` owns what can go wrong between a path on the command line and a parsed
TOML table: a missing file, a directory, a file that cannot be read, one that is not
UTF-8 text, one that is not valid TOML. Each becomes a
:class:`~corridor.errors.ParameterError` naming the option and the path (the CLI prints
it as one line, exit code 2), never a traceback. The loaders of corridor files, link
parameters and the risk and fleet policies read through it (the inventory scan parses
text it has already read, and the dashboard's map tolerates an unreadable file).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from corridor.errors import ParameterError


def read_toml(path: str | os.PathLike[str], field: str,
              what: str = "TOML file") -> dict[str, Any]:
    """The table in the TOML file at ``path``; ``field`` names the option that gave the
    path and ``what`` the kind of file expected, in the error."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParameterError(field, str(file), f"must be an existing {what}") from None
    except IsADirectoryError:
        raise ParameterError(field, str(file), f"must be a {what}, not a directory") from None
    except UnicodeDecodeError:
        raise ParameterError(field, str(file), f"must be a UTF-8 {what}") from None
    except OSError as exc:
        raise ParameterError(field, str(file), f"must be a readable {what}",
                             exc.strerror or type(exc).__name__) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ParameterError(field, str(file), f"is not valid TOML: {exc}") from None
