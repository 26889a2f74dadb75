"""A small migration runner: numbered plain-SQL files, applied in order, each recorded with its
checksum. An applied file that changed afterwards stops the run: the schema it describes is no
longer the schema in the database, and silently carrying on would hide that.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from shared.errors import ConfigError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Serializes concurrent runners (several containers starting at once).
_LOCK_KEY = 0x6B656E73616B75

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        if not _FILE.match(path.name):
            raise ConfigError(f"migration file name {path.name!r} is not NNNN_name.sql")
        found.append(Migration(path.name, path.read_text(encoding="utf-8")))
    numbers = [m.name[:4] for m in found]
    if len(set(numbers)) != len(numbers):
        raise ConfigError("two migration files share a number")
    return found


async def migrate(database_url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; return the names applied. Raise ConfigError on drift."""
    migrations = discover(directory)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await conn.execute(_CREATE_TABLE)
            rows = await conn.fetch("SELECT name, checksum FROM schema_migrations")
            applied = {r["name"]: r["checksum"] for r in rows}
            known = {m.name for m in migrations}
            missing = sorted(set(applied) - known)
            if missing:
                raise ConfigError(f"applied migrations missing from {directory}: {missing}")
            for m in migrations:
                if m.name in applied and applied[m.name] != m.checksum:
                    raise ConfigError(
                        f"migration {m.name} was changed after it was applied "
                        f"(recorded checksum {applied[m.name][:12]}…, file {m.checksum[:12]}…); "
                        "add a new migration instead of editing an applied one"
                    )
            done: list[str] = []
            for m in migrations:
                if m.name in applied:
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                        m.name,
                        m.checksum,
                    )
                log.info("applied migration %s", m.name)
                done.append(m.name)
            return done
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()
