"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with the matching HTTP status."""

from __future__ import annotations

from typing import Any

# nginx's status for "the client closed the connection before the response": logged, never sent.
CLIENT_LEFT = 499

# HTTP status -> OpenAI's error type names (what the official client maps to its exception classes).
TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def error_type(status: int) -> str:
    """OpenAI's name for a status; a status not in TYPES is the client's fault below 500, the server's from 500."""
    return TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def model_not_found(name: str, available: list[str]) -> APIError:
    return APIError(404, f"The model '{name}' does not exist (served: {', '.join(available)})", param="model",
                    code="model_not_found")
