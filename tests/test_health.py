"""GET /health: the database and the data directory."""
from __future__ import annotations

import shutil


def test_health_is_ok_with_its_checks(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "provider": "oneclick",
                                   "checks": {"database": "ok", "data_dir": "ok", "provider": "ok"},
                                   "providers": {"oneclick": {"state": "healthy", "reason": None, "until": None,
                                                              "sent_last_hour": 0, "failed_last_hour": 0}},
                                   "details": {"unknown_outcome_messages": 0, "unknown_outcome_sends": 0}}


def test_health_is_503_naming_the_failing_check(app, client, settings):
    shutil.rmtree(settings["DATA_DIR"])
    response = client.get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "error"
    assert body["checks"]["data_dir"].startswith("error:")
