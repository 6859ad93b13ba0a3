"""core/db.py's pure parts: placeholders for psycopg, URLs, passwords kept out of messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from sentiloop.core.db import SQLiteDatabase, open_database, redact, to_pyformat


def test_placeholders_become_pyformat_outside_quotes() -> None:
    sql = "SELECT '?', \"a?\", x FROM t WHERE a = ? AND b LIKE '5%' AND c % 2 = ?"
    assert to_pyformat(sql) == (
        "SELECT '?', \"a?\", x FROM t WHERE a = %s AND b LIKE '5%%' AND c %% 2 = %s"
    )


def test_urls_choose_the_engine(tmp_path: Path) -> None:
    absolute = str(tmp_path / "named.db")  # starts with "/"
    opened = [
        open_database(None, tmp_path / "default.db"),
        open_database(f"sqlite://{absolute}", tmp_path / "unused.db"),
        open_database(f"sqlite:///{absolute}", tmp_path / "unused.db"),  # SQLAlchemy's form
    ]
    try:
        assert [d.path for d in opened if isinstance(d, SQLiteDatabase)] == [
            tmp_path / "default.db",
            tmp_path / "named.db",
            tmp_path / "named.db",
        ]
    finally:
        for database in opened:
            database.close()
    with pytest.raises(ValueError, match=r"mysql://u:\*\*\*@h/d.*sqlite: or postgresql:"):
        open_database("mysql://u:secret@h/d", tmp_path / "x.db")


def test_passwords_are_redacted() -> None:
    assert redact("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert redact("postgresql://app@db/x") == "postgresql://app@db/x"
