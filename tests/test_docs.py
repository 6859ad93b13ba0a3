"""GET /docs (Swagger UI) and GET /openapi.json, served by Envoy on the mesh's origin:
the files over HTTP, then the page in a real Chromium (Playwright), offline, with
"Try it out" calling the running mesh."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from sentiloop.core import static_site
from sentiloop.testing import RunningMesh

UI_TIMEOUT_MS = 60_000
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def test_openapi_json_is_the_generated_document(http: httpx.Client) -> None:
    response = http.get("/openapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.content == static_site.OPENAPI.read_bytes()
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert isinstance(document["paths"], dict) and document["paths"]


@pytest.mark.parametrize("path", ["/docs", "/docs/"])
def test_docs_page(http: httpx.Client, path: str) -> None:
    response = http.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.content == (static_site.DOCS_DIR / "index.html").read_bytes()
    assert 'url: "/openapi.json"' in response.text
    # HEAD answers the same headers, without the body.
    head = http.head(path)
    assert head.status_code == 200
    assert head.headers["content-type"] == "text/html; charset=utf-8"
    assert head.content == b""


@pytest.mark.parametrize("name", list(static_site.ASSETS))
def test_assets_are_the_vendored_files(http: httpx.Client, name: str) -> None:
    response = http.get(f"/docs/{name}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == static_site.ASSETS[name]
    assert response.headers["cache-control"] == static_site.ASSET_CACHE
    assert response.content == (static_site.DOCS_DIR / name).read_bytes()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/docs"),
        ("POST", "/docs/"),
        ("PUT", "/docs/swagger-ui.css"),
        ("DELETE", "/openapi.json"),
    ],
)
def test_other_methods_are_not_served(http: httpx.Client, method: str, path: str) -> None:
    response = http.request(method, path, content=b"{}")
    assert response.status_code in (404, 405), response.text
    # A short error (Envoy's "could not resolve ... to a method"), not the page or the file.
    assert not response.headers.get("content-type", "").startswith("text/html")
    assert len(response.content) < 1000
    assert b"SwaggerUIBundle" not in response.content and b'"openapi"' not in response.content


def test_unknown_docs_path_is_404(http: httpx.Client) -> None:
    response = http.get("/docs/index.html")
    assert response.status_code == 404
    assert b"SwaggerUIBundle" not in response.content


def test_api_still_transcoded(http: httpx.Client) -> None:
    # The docs routes sit before the catch-all: the JSON API is unchanged.
    response = http.get("/health")
    assert response.status_code == 200, response.text
    assert "services" in response.json()


@dataclass
class DocsPage:
    page: Any
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    errors: list[str] = field(default_factory=list)  # uncaught JavaScript errors


@pytest.fixture
def docs(browser: Any, mesh: RunningMesh) -> Iterator[DocsPage]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = DocsPage(context.new_page())
    opened.page.set_default_timeout(UI_TIMEOUT_MS)
    opened.page.on("request", lambda request: opened.requests.append(request.url))
    opened.page.on("pageerror", lambda error: opened.errors.append(str(error)))
    opened.page.goto(f"{mesh.url}/docs", wait_until="load")
    # Swagger UI has fetched /openapi.json and rendered an operation block per method.
    opened.page.wait_for_selector(".opblock")
    yield opened
    context.close()
    assert not opened.errors, opened.errors


def _operation(page: Any, method: str, path: str) -> Any:
    return page.locator(f".opblock.opblock-{method}").filter(
        has=page.locator(f'.opblock-summary-path[data-path="{path}"]')
    )


def test_swagger_ui_renders_offline(docs: DocsPage, mesh: RunningMesh) -> None:
    page = docs.page
    assert _operation(page, "post", "/predict").count() == 1
    assert _operation(page, "get", "/health").count() == 1
    document = json.loads(static_site.OPENAPI.read_text())
    listed = page.locator(".opblock").count()
    assert listed == sum(1 for item in document["paths"].values() for key in item if key in METHODS)
    origin = urlsplit(mesh.url)
    assert docs.requests
    off_origin = [
        url
        for url in docs.requests
        if (urlsplit(url).scheme, urlsplit(url).netloc) != (origin.scheme, origin.netloc)
    ]
    assert not off_origin, off_origin
    assert f"{mesh.url}/openapi.json" in docs.requests
    assert f"{mesh.url}/docs/swagger-ui-bundle.js" in docs.requests


def test_try_it_out_calls_the_mesh(docs: DocsPage, mesh: RunningMesh) -> None:
    page = docs.page
    operation = _operation(page, "get", "/health")
    operation.locator(".opblock-summary").first.click()
    try_it_out = operation.locator("button.try-out__btn", has_text="Try it out")
    if try_it_out.count():  # already on with tryItOutEnabled
        try_it_out.click()
    with page.expect_response(f"{mesh.url}/health") as answered:
        operation.locator("button.execute").click()
    assert answered.value.status == 200
    live = operation.locator(".live-responses-table .response")
    live.first.wait_for()
    assert live.locator(".response-col_status").first.inner_text().strip() == "200"
    body = live.locator(".response-col_description pre").first.inner_text()
    assert '"services"' in body
    assert json.loads(body)["status"] == "ok"
