"""The pages that Envoy serves on the mesh's own origin, with no upstream: the operator's
web console on ``GET /`` (``sentiloop/web/console``: its own script and style, and a vendored
uPlot, on ``/console/<name>``), and the API docs, ``GET /docs`` (Swagger UI, vendored in
``sentiloop/web/docs``) and ``GET /openapi.json`` (``sentiloop/v1/openapi.json``, generated
by ``scripts/gen_openapi.py``).

Each file is a ``direct_response`` route that Envoy reads into memory when it loads its
configuration. The routes disable the gRPC-JSON transcoder (which would otherwise answer
404 "Could not resolve /docs to a method" before the router sees them), set the
content-type themselves (a direct response goes through Envoy's local reply, which would
label the body text/plain), and match only GET and HEAD: other methods fall through to
the transcoder's 404.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent.parent
DOCS_DIR = PACKAGE / "web" / "docs"
CONSOLE_DIR = PACKAGE / "web" / "console"
OPENAPI = PACKAGE / "v1" / "openapi.json"

# The files of DOCS_DIR that the page loads, each on /docs/<name>, and their content-type.
ASSETS: dict[str, str] = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-16x16.png": "image/png",
    "favicon-32x32.png": "image/png",
}
HTML = "text/html; charset=utf-8"
JSON = "application/json"
JAVASCRIPT = "text/javascript; charset=utf-8"
CSS = "text/css; charset=utf-8"

# For the route configuration's max_direct_response_body_size_bytes: Envoy refuses a
# direct-response file larger than this (4 KB by default); swagger-ui-bundle.js is ~1.7 MB.
MAX_BODY_BYTES = 8 * 1024 * 1024

# The vendored assets change only with a Swagger UI update; the page and the API
# description are revalidated on every load, so a new API shows at once.
ASSET_CACHE = "public, max-age=86400"
PAGE_CACHE = "no-cache"

# The console's files on /console/<name>: content-type and cache-control. Its own script
# and style change with every Sentiloop release and must match the page, so they are
# revalidated like the page; uPlot changes only when it is updated.
CONSOLE_ASSETS: dict[str, tuple[str, str]] = {
    "app.js": (JAVASCRIPT, PAGE_CACHE),
    "console.css": (CSS, PAGE_CACHE),
    "favicon.svg": ("image/svg+xml", PAGE_CACHE),
    "uPlot.iife.min.js": (JAVASCRIPT, ASSET_CACHE),
    "uPlot.min.css": (CSS, ASSET_CACHE),
}
# The console holds the operator token and its buttons change what is served: only this
# origin's scripts run in it (a second line of defence behind inserting API data as text
# only), it talks to this origin alone, and no other site may frame it (clickjacking).
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

TRANSCODER = "envoy.filters.http.grpc_json_transcoder"


def _header(name: str, value: str) -> dict[str, Any]:
    return {
        "header": {"key": name, "value": value},
        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
    }


def _file_route(
    path: str,
    file: Path,
    content_type: str,
    cache_control: str,
    extra_headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    if not file.is_file():
        # Envoy would refuse the whole configuration; say which file and why.
        hint = " (run scripts/gen_openapi.py)" if path == "/openapi.json" else ""
        raise FileNotFoundError(f"{file}, served on {path}, is missing{hint}")
    return {
        "match": {
            "path": path,
            "headers": [{"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}],
        },
        "direct_response": {"status": 200, "body": {"filename": str(file)}},
        "response_headers_to_add": [
            _header("content-type", content_type),
            _header("cache-control", cache_control),
            _header("x-content-type-options", "nosniff"),
            *(_header(name, value) for name, value in (extra_headers or {}).items()),
        ],
        "typed_per_filter_config": {
            TRANSCODER: {
                "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                "disabled": True,
            }
        },
    }


def routes(
    docs_dir: Path = DOCS_DIR, openapi: Path = OPENAPI, console_dir: Path = CONSOLE_DIR
) -> list[dict[str, Any]]:
    """Envoy routes for / and /console/<asset>, /docs, /docs/, /docs/<asset> and
    /openapi.json; they go before the catch-all route (whose prefix "/" the console's
    exact "/" must precede)."""
    index = docs_dir / "index.html"
    return [
        _file_route(
            "/",
            console_dir / "index.html",
            HTML,
            PAGE_CACHE,
            {"content-security-policy": CONSOLE_CSP, "referrer-policy": "no-referrer"},
        ),
        *(
            _file_route(f"/console/{name}", console_dir / name, content_type, cache_control)
            for name, (content_type, cache_control) in CONSOLE_ASSETS.items()
        ),
        _file_route("/docs", index, HTML, PAGE_CACHE),
        _file_route("/docs/", index, HTML, PAGE_CACHE),
        *(
            _file_route(f"/docs/{name}", docs_dir / name, content_type, ASSET_CACHE)
            for name, content_type in ASSETS.items()
        ),
        _file_route("/openapi.json", openapi, JSON, PAGE_CACHE),
    ]
