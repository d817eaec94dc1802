"""Where an Optuna study is kept (`hydra.sweeper.storage`), so that every job of a sweep, on this
machine or on a cluster's nodes, reports to the same study:

- `null`: in memory, for the sweep alone (a study with a pruner is then kept in a journal file in
  the sweep's folder, since its jobs report to it from their own processes);
- `sqlite:///<file>`: one machine;
- `journal:<file>`: Optuna's journal file (one file of appended lines, safe on a shared file
  system, small enough to commit);
- `postgresql://<user>@<host>[:<port>]/<database>`: a database server. The password never sits in
  the URL (it would be in the config, the run folders and the logs): libpq reads it from
  `PGPASSWORD` or `~/.pgpass`.

`check_storage` says in one sentence, before the first trial, what is wrong with a storage string;
`open_storage` gives Optuna's storage for it, in the sweeper and in each job alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from stn.errors import Allowed, ConfigError, out_of_range

KEY = "hydra.sweeper.storage"
ALLOWED = (
    "sqlite:///<file> | journal:<file> | postgresql://<user>@<host>[:<port>]/<database> | null (in memory)"
)
POSTGRES_SCHEMES = ("postgresql", "postgresql+psycopg2", "postgresql+psycopg", "postgres")
SQLITE_HEADER = b"SQLite format 3\x00"


def _file_of(storage: str) -> Path | None:
    if storage.startswith("sqlite:///"):
        return Path(storage.removeprefix("sqlite:///"))
    if storage.startswith("journal:"):
        return Path(storage.removeprefix("journal:"))
    return None


def check_storage(storage: str | None) -> None:
    """ConfigError naming the key and the allowed forms for a storage string that cannot work."""
    if not storage:
        return
    storage = str(storage)
    scheme = storage.split(":", 1)[0]
    if scheme in POSTGRES_SCHEMES:
        parts = urlsplit(storage)
        if parts.password is not None:
            raise ConfigError(
                f"{KEY} carries a password, which would then sit in the config, the run folders and "
                "the logs; leave it out of the URL and put it in PGPASSWORD or ~/.pgpass"
            )
        if not parts.hostname or not parts.path.strip("/"):
            raise ConfigError(f"{KEY}={storage} names no host or no database; allowed {ALLOWED}")
        return
    path = _file_of(storage)
    if path is None or not str(path).strip():
        raise ConfigError(out_of_range(KEY, storage, Allowed(lambda _: False, ALLOWED)))
    if path.exists() and not path.is_file():
        raise ConfigError(f"{KEY}={storage}: {path} is not a file")
    if not path.is_file():
        if not path.parent.is_dir():
            raise ConfigError(f"{KEY}={storage}: its folder {path.parent} does not exist")
        return
    with path.open("rb") as file:
        header = file.read(16)
    if storage.startswith("sqlite:///") and header and header != SQLITE_HEADER:
        raise ConfigError(f"{KEY}={storage}: {path} is not a SQLite database")
    if storage.startswith("sqlite:///") and header:
        tables = _sqlite_tables(path)
        if tables and "studies" not in tables:
            shown = ", ".join(sorted(tables)[:5])
            raise ConfigError(
                f"{KEY}={storage}: {path} is another program's SQLite database (tables {shown}), not an "
                "Optuna study's; name a new file"
            )
    if storage.startswith("journal:") and header and not header.startswith(b"{"):
        raise ConfigError(f"{KEY}={storage}: {path} is not an Optuna journal (its lines are JSON)")


def _sqlite_tables(path: Path) -> set[str]:
    import sqlite3
    from contextlib import closing

    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.Error:
        return set()  # locked or unreadable: Optuna's own open says why
    return {str(name) for (name,) in rows}


def absolute(storage: str) -> str:
    """The storage string with its file made absolute: the jobs may run in another folder (a SLURM
    node's job starts where sbatch was run, a user may `cd`)."""
    path = _file_of(storage)
    if path is None:
        return storage
    prefix = "sqlite:///" if storage.startswith("sqlite:///") else "journal:"
    return f"{prefix}{path.resolve()}"


def open_storage(storage: str | None) -> Any:
    """Optuna's storage for a checked storage string (None: in memory)."""
    if not storage:
        return None
    import optuna

    storage = str(storage)
    if storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(storage.removeprefix("journal:")))
    if storage.startswith("postgres:"):
        storage = "postgresql:" + storage.removeprefix("postgres:")
    # a server that went away is reconnected to rather than failing the next call
    return optuna.storages.RDBStorage(storage, engine_kwargs={"pool_pre_ping": True})


def shown(storage: str | None) -> str:
    return str(storage) if storage else "in memory"
