"""What the OpenAPI schema says beyond the routes' signatures: request bodies the routes parse themselves (so a
bad body gets a typed error, never a bare 422), the signed-request authentication, and Swagger UI served from
this server (its files come from the `swagger-ui-bundle` package: `/docs` works offline)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from caltrain.service.auth import CONTENT_SHA256, MEMBER, SIGNATURE, TIMESTAMP

SIGNED_REQUESTS = f"""Every route that acts for a member, or reveals anything about a job, needs an HTTP request
signature by a consortium member (`caltrain.service.auth.sign_request`): `{MEMBER}` (the member's name),
`{TIMESTAMP}` (seconds since the epoch, within 120 s of the server's clock), `{CONTENT_SHA256}` (hex SHA-256 of
the body) and `{SIGNATURE}` (base64 Ed25519 signature, by the member's consortium key, of
`tagged_hash("caltrain/request/v1", METHOD, PATH?QUERY, TIMESTAMP, SHA256(body))`). The server checks it from the
headers before it reads the body, and each signature once. This is a courtesy that refuses early: what the
enclave does is decided by the member's own signature inside the request (wire `auth`), bound to the attested
enclave instance."""

_HEADERS = {
    "member": (MEMBER, "the signing member's name"),
    "timestamp": (TIMESTAMP, "seconds since the epoch"),
    "content-sha256": (CONTENT_SHA256, "hex SHA-256 of the request body"),
    "signature": (SIGNATURE, "base64 Ed25519 signature (see the API description)"),
}
SECURITY_SCHEMES = {
    f"caltrain-{key}": {"type": "apiKey", "in": "header", "name": name, "description": what}
    for key, (name, what) in _HEADERS.items()
}
# One requirement naming all four headers: a request needs every one of them.
SIGNED: dict[str, Any] = {"security": [{name: [] for name in SECURITY_SCHEMES}]}


def json_body(model: type[BaseModel] | dict[str, Any], description: str = "") -> dict[str, Any]:
    """OpenAPI for a JSON body the route parses itself (size limit first, then typed errors)."""
    schema = model if isinstance(model, dict) else model.model_json_schema()
    return {"requestBody": {"required": True, "description": description,
                            "content": {"application/json": {"schema": schema}}}}


def binary_body(description: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "description": description, "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


SEALED_BODY = json_body(
    {"title": "SealedIn", "type": "object", "required": ["sealed"], "additionalProperties": False,
     "properties": {"sealed": {"type": "string", "description": "base64 of a SealedRequest ciphertext: the member's "
                               "signed request HPKE-sealed to the enclave"}}},
    "a member request sealed to the attested enclave (`caltrain.enclave.authority.seal_request`)",
)


def wire_body(name: str, description: str) -> dict[str, Any]:
    """A member-signed wire message as JSON (`caltrain.enclave.wire.to_json`): bytes fields base64."""
    return json_body({"title": name, "type": "object", "description": description, "required": ["auth"],
                      "properties": {"auth": {"type": "object", "required": ["member", "request_id", "signature"],
                                              "properties": {"member": {"type": "string"},
                                                             "request_id": {"type": "string"},
                                                             "signature": {"type": "string"}}}}},
                     description)


def install(app: FastAPI) -> None:
    """Security schemes in the schema, and Swagger UI with its files served from here."""
    from swagger_ui_bundle import swagger_ui_path

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, summary=app.summary,
                              description=f"{app.description}\n\n{SIGNED_REQUESTS}", routes=app.routes)
            doc.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]
    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")
