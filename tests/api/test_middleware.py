"""Error handler, GZip, CORS, X-Process-Time and --api-log on a bare app (no model needed)."""

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modules.api.deps import parse_credentials
from modules.api.middleware import install_middleware
from modules.errors import CheckpointNotFoundError, InvalidRequestError
from modules.flags import LaunchFlags


def make_client(**flags):
    app = FastAPI()
    install_middleware(app, LaunchFlags(**flags))

    @app.get("/sdapi/v1/bad")
    def bad():
        raise InvalidRequestError("steps must be between 1 and 500, got 0")

    @app.get("/sdapi/v1/missing")
    def missing():
        raise CheckpointNotFoundError("Checkpoint 'x' not found")

    @app.get("/sdapi/v1/bug")
    def bug():
        raise RuntimeError("boom")

    @app.get("/sdapi/v1/big")
    def big():
        return {"data": "x" * 5000}

    @app.get("/sdapi/v1/small")
    def small():
        return {"data": "x"}

    return TestClient(app, raise_server_exceptions=False)


def test_webui_errors_map_to_their_status_with_a1111_body():
    client = make_client()
    response = client.get("/sdapi/v1/bad")
    assert response.status_code == 422
    assert response.json() == {
        "error": "InvalidRequestError",
        "detail": "steps must be between 1 and 500, got 0",
        "body": "",
        "errors": "steps must be between 1 and 500, got 0",
    }
    assert client.get("/sdapi/v1/missing").status_code == 404


def test_unexpected_errors_are_500_with_an_error_id(caplog):
    response = make_client().get("/sdapi/v1/bug")
    assert response.status_code == 500
    detail = response.json()["detail"]
    assert detail.startswith("Internal error [") and "RuntimeError: boom" in detail
    error_id = detail.split("[", 1)[1].split("]", 1)[0]
    assert error_id in caplog.text


def test_gzip_only_from_1000_bytes_and_process_time():
    client = make_client()
    big = client.get("/sdapi/v1/big", headers={"Accept-Encoding": "gzip"})
    assert big.headers["Content-Encoding"] == "gzip" and big.json()["data"] == "x" * 5000
    small = client.get("/sdapi/v1/small", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in small.headers
    assert float(small.headers["X-Process-Time"]) >= 0


@pytest.mark.parametrize(
    ("flags", "origin", "allowed"),
    [
        ({}, "http://a.test", False),
        ({"cors_allow_origins": "http://a.test, http://b.test"}, "http://b.test", True),
        ({"cors_allow_origins": "http://a.test"}, "http://evil.test", False),
        ({"cors_allow_origins_regex": r"https://.*\.example\.org"}, "https://app.example.org", True),
    ],
)
def test_cors_only_when_configured(flags, origin, allowed):
    response = make_client(**flags).get("/sdapi/v1/small", headers={"Origin": origin})
    assert (response.headers.get("access-control-allow-origin") == origin) is allowed


def test_api_log(caplog):
    caplog.set_level("INFO", logger="modules.api.middleware")
    make_client().get("/sdapi/v1/small")
    assert "API " not in caplog.text
    make_client(api_log=True).get("/sdapi/v1/small")
    assert "GET /sdapi/v1/small 200" in caplog.text


def test_parse_credentials_splits_on_the_first_colon_only():
    assert parse_credentials("u:p, admin:a:b:c ,bad, :empty-user") == {"u": "p", "admin": "a:b:c"}
    assert parse_credentials("") == {} and parse_credentials(None) == {}
