"""Secrets from systemd credentials (``$CREDENTIALS_DIRECTORY``) or environment variables; never logged.

Examples:
    >>> redact("login bob:hunter2 failed", ["hunter2", None])
    'login bob:*** failed'
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

MASK = "***"


def read_secret(env_name: str | None, credential_name: str | None) -> str | None:
    """The secret from the systemd credential file ``$CREDENTIALS_DIRECTORY/<credential_name>``, else ``$env_name``.

    Returns None when neither is set (an empty value counts as unset). Only names are ever logged.
    """
    if credential_name:
        if "/" in credential_name or credential_name in {".", ".."}:
            msg = f"invalid credential name {credential_name!r}: must be a plain file name"
            raise ValueError(msg)
        folder = os.environ.get("CREDENTIALS_DIRECTORY")
        if folder:
            path = Path(folder) / credential_name
            try:
                value = path.read_text(encoding="utf-8").rstrip("\r\n")
            except FileNotFoundError:
                log.debug("credential %s not in %s", credential_name, folder)
            except OSError as err:
                log.warning("credential %s unreadable: %s", credential_name, err.strerror)
            else:
                if value:
                    log.debug("secret read from credential %s", credential_name)
                    return value
    if env_name:
        from_env = os.environ.get(env_name)
        if from_env:
            log.debug("secret read from environment variable %s", env_name)
            return from_env
    return None


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every non-empty secret replaced by ``***`` (longest first, so overlaps are covered)."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
