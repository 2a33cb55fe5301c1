"""The one secret-file reader behind the API token and the Redis password file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stocksched.secretfile import SecretFileError, read_secret_file


def test_surrounding_whitespace_is_not_part_of_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("  correct horse\r\n")
    assert read_secret_file(path, "Redis password") == "correct horse"


def test_errors_name_the_secret_and_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    with pytest.raises(SecretFileError, match=re.escape(f"API token file {empty} is empty")):
        read_secret_file(empty, "API token")
    with pytest.raises(SecretFileError, match=r"cannot read Redis password file .*missing"):
        read_secret_file(tmp_path / "missing", "Redis password")
    assert issubclass(SecretFileError, ValueError)  # connect() and settings expect ValueError
