"""Swagger UI at /docs/: served from this host, and makes the browser ask no other host for anything."""
from __future__ import annotations

import json
import re
from urllib.parse import urljoin

import requests

from tests.conftest import running_gunicorn


def test_docs_page_and_its_config_refer_to_no_other_host(settings):
    with running_gunicorn(settings, workers=1) as base_url:
        page = requests.get(f"{base_url}/docs/", timeout=5)
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        asset_statuses = [requests.get(urljoin(page.url, asset), timeout=5).status_code for asset in assets]
    assert page.status_code == 200
    config = json.loads(re.search(r"var user_config = (\{.*?\});", page.text).group(1))
    # Swagger UI's default validatorUrl, used when the config leaves it out, is validator.swagger.io:
    # a badge the browser would fetch from there with the document's address.
    assert config["validatorUrl"] is None
    assert config["url"] == "/openapi.json"
    urls = re.findall(r"https?://[^\s\"'<>]+", page.text)
    assert urls == [f"{base_url}/docs/oauth2-redirect.html"]  # the config's own, on this host
    assert all(asset.startswith("/docs/") for asset in assets) and asset_statuses == [200] * len(assets)
