"""Secrets kept in files (API token, Redis password): one reader, one stripping rule.

Surrounding whitespace is not part of the secret: ``echo`` and editors add a newline,
and a systemd credential may carry one too.
"""

from __future__ import annotations

from pathlib import Path


class SecretFileError(ValueError):
    """The secret file cannot be read or holds nothing but whitespace."""


def read_secret_file(path: Path, what: str) -> str:
    """The secret in ``path`` without surrounding whitespace; ``what`` names it in errors.

    ``what`` reads like "API token" or "Redis password": the errors say "cannot read
    API token file PATH: REASON" and "API token file PATH is empty".
    """
    try:
        secret = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SecretFileError(f"cannot read {what} file {path}: {reason}") from None
    if not secret:
        raise SecretFileError(f"{what} file {path} is empty")
    return secret
