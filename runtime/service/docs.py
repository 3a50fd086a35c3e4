"""The OpenAPI page at /docs, working offline: Swagger UI's script, style and icon come from the installed
fastapi-swagger package (the serve extra pins it), served by the service itself, not from a CDN."""
from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
          "favicon-32x32.png": "image/png"}


@cache
def _asset(name: str) -> bytes:
    return (resources.files("fastapi_swagger") / "resources" / name).read_bytes()


def add_docs(app: FastAPI) -> None:
    """GET /docs and its assets under /docs/ (not in the OpenAPI document: they are not the API)."""
    openapi_url = app.openapi_url
    assert openapi_url is not None, "the service publishes its OpenAPI document"

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    def docs():
        return get_swagger_ui_html(openapi_url=openapi_url, title=f"{app.title} - API",
                                   swagger_js_url="/docs/swagger-ui-bundle.js", swagger_css_url="/docs/swagger-ui.css",
                                   swagger_favicon_url="/docs/favicon-32x32.png",
                                   swagger_ui_parameters={"validatorUrl": None})  # no badge from swagger.io

    @app.get("/docs/{name}", include_in_schema=False)
    def asset(name: str):
        if name not in ASSETS:
            raise HTTPException(404, "no such file")
        return Response(_asset(name), media_type=ASSETS[name], headers={"Cache-Control": "max-age=86400"})
