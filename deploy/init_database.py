"""Makes the password of docker-compose's metadata database (PostgreSQL) once, beside
the services' own credentials in the `credentials` volume, the way they make theirs: a
random token drawn on the first start, owner-only, kept afterwards. Two files:

* postgres.password: read by the postgres container (POSTGRES_PASSWORD_FILE) when it
  creates its database, on its first start;
* postgres.pgpass: libpq's password file (PGPASSFILE), which the services' psycopg reads,
  so that their SENTILOOP_DATABASE_URL carries no password and compose holds none.

Usage: init_database.py [FOLDER] (default /data/secrets); POSTGRES_USER names the user
(default sentiloop). Exits 0 once both files exist."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from sentiloop.core.auth import read_or_create_token

PASSWORD_FILE = "postgres.password"
PGPASS_FILE = "postgres.pgpass"


def pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def main(argv: list[str]) -> int:
    folder = Path(argv[1] if len(argv) > 1 else "/data/secrets")
    password = read_or_create_token(folder / PASSWORD_FILE)
    user = os.environ.get("POSTGRES_USER", "sentiloop")
    line = f"*:*:*:{pgpass_field(user)}:{pgpass_field(password)}\n"
    pgpass = folder / PGPASS_FILE
    if not pgpass.is_file() or pgpass.read_text(encoding="utf-8") != line:
        # libpq ignores a password file that its group or others may read.
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=".pgpass-")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(line)
        os.replace(temporary, pgpass)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
