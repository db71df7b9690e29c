"""Optuna storage URLs: the default, the driver, and passwords kept out of sight.

* The default storage is ``sqlite:///<project>/optuna.db``; ``BOOTLEG_OPTUNA_STORAGE`` names
  another one (the way to pass a PostgreSQL URL with its password: no command line shows it).
* ``postgresql://`` URLs are rewritten to ``postgresql+psycopg2://``: SQLAlchemy 2 maps the bare
  scheme to psycopg 3, and the project installs psycopg2. Printed and documented URLs use the
  rewritten form, so ``optuna-dashboard`` and ``optuna.load_study`` accept them as printed.
* Printed URLs and worker command lines never carry the password: :func:`public_url` drops
  it, and libpq finds it in ``PGPASSWORD`` or a ``~/.pgpass``-style file (``PGPASSFILE``);
  worker processes get the full URL in their environment only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from bootleg.errors import BootlegError
from flows.provenance import project_dir

ENV_STORAGE = "BOOTLEG_OPTUNA_STORAGE"
_PASSWORD = re.compile(r"^(?P<head>[a-z0-9+]+://[^:/@]+):(?P<pw>[^@]*)@")


def default_storage() -> str:
    """``BOOTLEG_OPTUNA_STORAGE``, else ``sqlite:///<project>/optuna.db``."""
    return os.environ.get(ENV_STORAGE) or f"sqlite:///{project_dir() / 'optuna.db'}"


def sqlalchemy_url(url: str) -> str:
    """``postgresql://`` -> ``postgresql+psycopg2://`` (the installed driver); others unchanged."""
    return "postgresql+psycopg2://" + url[len("postgresql://") :] if url.startswith("postgresql://") else url


def redact(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    return _PASSWORD.sub(r"\g<head>:***@", url)


def password(url: str) -> str | None:
    m = _PASSWORD.match(url)
    return m.group("pw") if m else None


def public_url(url: str) -> str:
    """The URL to print or pass on a command line: the installed driver's scheme, no password
    (libpq reads it from ``PGPASSWORD`` or ``~/.pgpass``)."""
    return _PASSWORD.sub(r"\g<head>@", sqlalchemy_url(url))


def check_sqlite_folder(url: str) -> None:
    """A ``sqlite:///`` file in a folder that does not exist is a one-line error (not created)."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        folder = Path(url[len("sqlite:///") :]).parent
        if not folder.is_dir():
            raise BootlegError(f"storage {url}: folder {folder} does not exist; create it or choose another path")


def dashboard_command(url: str, bindir: str | Path = "") -> str:
    """The ``optuna-dashboard`` line for ``url``, runnable as printed."""
    exe = f"{bindir}/optuna-dashboard" if str(bindir) else "optuna-dashboard"
    note = ""
    if password(url):
        note = "   (password: export PGPASSWORD, or a line in ~/.pgpass)"
    elif url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
        note = "   (the file appears when the first study runs: python -m flows.study run)"
    return f"{exe} {public_url(url)} --host 127.0.0.1 --port 8080{note}"
