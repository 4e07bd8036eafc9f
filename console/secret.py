"""The key that signs the console's session cookies: SECRET_KEY, else one generated once.

The generated key is kept in DATA_DIR/secret_key (0600), so every gunicorn worker, every restart
and the worker process sign with the same key. It is never logged.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

SECRET_KEY_FILE = "secret_key"


def secret_key(configured: str | None, data_dir: Path) -> str:
    """SECRET_KEY if set; else the key in DATA_DIR/secret_key, written there first if there is none."""
    if configured:
        return configured
    path = data_dir / SECRET_KEY_FILE
    if not path.exists():
        # Written whole under another name and linked into place: processes starting together
        # never read a half-written key, and the first link wins (the others read the winner's).
        draft = data_dir / f".{SECRET_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as out:
                out.write(secrets.token_hex(32))
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()
