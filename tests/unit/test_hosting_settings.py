"""Pure parts of application hosting: a handler's environmentVariables (names, the
os.environ claims, the WSGI/ASGI wrappers) and the TLS settings a rule gives an https
upstream."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import pytest

from poolhouse.config import values
from poolhouse.worker import app_environment
from poolhouse.worker.handlers.upstream_tls import TlsConfigError, TlsSettings, context_for, settings_from


@pytest.mark.parametrize("name", ["APP_ENV", "DATABASE_URL", "http_proxy", "https_proxy", "PATH", "Http_Thing"])
def test_environment_variable_names_accepted(name: str) -> None:
    values.validate_string("environmentVariableName", name)


@pytest.mark.parametrize("name,reason", [
    ("HTTP_X_ADMIN", "request header"), ("HTTP_PROXY", "request header"), ("CONTENT_TYPE", "request header"),
    ("CONTENT_LENGTH", "request header"), ("", "not a valid"), ("A=B", "not a valid"), ("wsgi.input", "not a valid"),
])
def test_environment_variable_names_refused(name: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        values.validate_string("environmentVariableName", name)


def test_os_environ_first_application_wins(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(app_environment, "_claims", {})
    monkeypatch.delenv("PH_TEST_VAR", raising=False)
    monkeypatch.setenv("PH_TEST_VAR", "inherited")  # the worker's own value is overridden
    app_environment.claim_process_environment({"PH_TEST_VAR": "a"}, "S/a")
    assert os.environ["PH_TEST_VAR"] == "a"
    with caplog.at_level(logging.WARNING, "poolhouse.worker"):
        app_environment.claim_process_environment({"PH_TEST_VAR": "b"}, "S/b")
        app_environment.claim_process_environment({"PH_TEST_VAR": "a"}, "S/c")  # the same value: no conflict
    assert os.environ["PH_TEST_VAR"] == "a"
    assert [r.getMessage() for r in caplog.records] == [
        "environment variable PH_TEST_VAR: S/b sets 'b' but S/a set 'a' first in this worker's os.environ; S/b "
        "sees its own value in the request environ only (put the applications in different pools to give each "
        "its own process environment)"]
    app_environment.claim_process_environment({"PH_TEST_VAR": "a2"}, "S/a")  # its owner's new configuration
    assert os.environ["PH_TEST_VAR"] == "a2"


def test_wsgi_wrapper_keeps_the_request_keys() -> None:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(environ)
        return [b""]
    wrapped = app_environment.with_environment(app, {"APP_ENV": "prod", "REQUEST_METHOD": "X"}, asgi=False)
    wrapped({"REQUEST_METHOD": "GET"}, None)
    assert seen["APP_ENV"] == "prod" and seen["REQUEST_METHOD"] == "GET"
    assert dict(seen["poolhouse.environment"]) == {"APP_ENV": "prod", "REQUEST_METHOD": "X"}
    with pytest.raises(TypeError):
        seen["poolhouse.environment"]["APP_ENV"] = "changed"  # read-only


def test_asgi_wrapper_sets_the_scope_key() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope)
    wrapped = app_environment.with_environment(app, {"APP_ENV": "prod"}, asgi=True)
    asyncio.run(wrapped({"type": "http"}, None, None))
    assert dict(seen["poolhouse.environment"]) == {"APP_ENV": "prod"}


def test_tls_settings_from_server_variables() -> None:
    assert settings_from(None) == TlsSettings("", True)
    assert settings_from({"HTTP_X_A": "1"}) == TlsSettings("", True)
    assert settings_from({"poolhouse_proxy_ca_file": " /ca.pem "}) == TlsSettings("/ca.pem", True)
    for off in ("false", "0", "Off", "NO"):
        assert settings_from({"POOLHOUSE_PROXY_VERIFY": off}).verify is False
    assert settings_from({"POOLHOUSE_PROXY_VERIFY": "true"}).verify is True


def test_tls_context_for_a_missing_ca_file(tmp_path: Any) -> None:
    with pytest.raises(TlsConfigError, match="cannot be loaded"):
        context_for(TlsSettings(str(tmp_path / "none.pem"), True), "h", 443)
    ctx = context_for(TlsSettings("", False), "h", 443)
    assert ctx.check_hostname is False
    assert context_for(TlsSettings("", True), "h", 443).check_hostname is True
