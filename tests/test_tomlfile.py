"""Tests of corridor.tomlfile: every way a named TOML file can be wrong is one
ParameterError naming the option and the path, never another exception."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from corridor.errors import ParameterError
from corridor.tomlfile import read_toml


def test_a_toml_file_is_read(tmp_path: Path) -> None:
    file = tmp_path / "a.toml"
    file.write_text('name = "x"\n[kme]\nport = 8443\n', encoding="utf-8")
    assert read_toml(file, "--config") == {"name": "x", "kme": {"port": 8443}}


@pytest.mark.parametrize(("kind", "allowed"), [
    ("missing", "must be an existing corridor file"),
    ("directory", "must be a corridor file, not a directory"),
    ("binary", "must be a UTF-8 corridor file"),
    ("invalid", "is not valid TOML: "),
    ("unreadable", "must be a readable corridor file (Permission denied)"),
])
def test_each_fault_is_one_line_naming_the_option_and_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, allowed: str) -> None:
    file = tmp_path / "c.toml"
    if kind == "directory":
        file.mkdir()
    elif kind == "binary":
        file.write_bytes(b"\x00\xff\xfe")
    elif kind == "invalid":
        file.write_text("[kme\n")
    elif kind == "unreadable":  # as a file of mode 0 reads for anyone but root
        file.write_text("a = 1\n")

        def refused(*args: object, **kwargs: object) -> str:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

        monkeypatch.setattr(Path, "read_text", refused)
    with pytest.raises(ParameterError) as exc:
        read_toml(file, "--config", "corridor file")
    message = str(exc.value)
    assert message.startswith(f"--config = '{file}': ")
    assert allowed in message
    assert "\n" not in message
    assert exc.value.field == "--config"
