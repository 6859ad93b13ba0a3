"""The mesh with SENTILOOP_DATABASE_URL on the test PostgreSQL server: feedback submitted
and listed through Envoy lands in PostgreSQL, not in a SQLite file; the other services
keep their SQLite files (they do not honour the setting yet)."""

from __future__ import annotations

from pathlib import Path

import httpx
from postgres import PostgresServer

from sentiloop.testing import start_mesh


def test_feedback_through_envoy_is_stored_in_postgres(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database()
    mesh = start_mesh(tmp_path, extra_env={"SENTILOOP_DATABASE_URL": url})
    try:
        with httpx.Client(base_url=mesh.url, headers=mesh.operator_headers, timeout=30) as http:
            payload = {"text": "Arrived broken", "user_label": "negative", "idempotency_key": "k1"}
            first = http.post("/feedback", json=payload)
            again = http.post("/feedback", json=payload)
            other = http.post("/feedback", json={"text": "Love it", "user_label": "positive"})
            for response in (first, again, other):
                assert response.status_code == 200, response.text
            assert again.json()["duplicate"] and again.json()["id"] == first.json()["id"]
            listed = http.get("/feedback").json()
            assert [r["text"] for r in listed["feedback"]] == ["Arrived broken", "Love it"]
            assert http.get("/feedback/stats").json()["total"] == 2
    finally:
        assert mesh.stop() == 0
    rows = postgres.execute(url, "SELECT text, idempotency_key FROM feedback.feedback ORDER BY id")
    assert rows == [("Arrived broken", "k1"), ("Love it", None)]
    assert not (tmp_path / "feedback" / "feedback.db").exists()
    assert (tmp_path / "registry").is_dir()  # the others: still files under the data dir
