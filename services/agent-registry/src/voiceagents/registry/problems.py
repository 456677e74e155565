"""RFC 9457 problem details: every error the API returns, with a stable `type`, a human
`detail`, and the offending `field` (or JSON path) for validation errors. Never a 5xx for a
client's mistake; an unexpected failure is a 500 that says nothing internal."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    ValidationException,
)
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
    HTTP_404_NOT_FOUND,
    HTTP_405_METHOD_NOT_ALLOWED,
    HTTP_409_CONFLICT,
    HTTP_412_PRECONDITION_FAILED,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)

log = structlog.get_logger("voiceagents.registry")

PROBLEM_JSON = "application/problem+json"
_TYPE_BASE = "urn:voiceagents:problem:"
# msgspec says where a nested value failed as "- at `$.a.b[0]`".
_AT_PATH = re.compile(r" - at `\$\.?([^`]*)`$")


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An `application/problem+json` body (RFC 9457)."""

    type: str
    title: str
    status: int
    detail: str
    # The request field at fault (`phone_number`, `config`, `unselected_functions[1]`).
    field: str | None = None
    # Where inside a JSON document value the fault is (`$.config.calendar_id`).
    json_path: str | None = None
    request_id: str | None = None


class ProblemError(Exception):
    """Raised by handlers and stores; rendered as problem+json by `problem_handler`."""

    status = HTTP_400_BAD_REQUEST
    slug = "bad-request"
    title = "Bad request"

    def __init__(
        self, detail: str, *, field: str | None = None, json_path: str | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.json_path = json_path


class BadRequest(ProblemError):
    pass


class Unauthorized(ProblemError):
    status = HTTP_401_UNAUTHORIZED
    slug = "unauthorized"
    title = "Missing or invalid API key"


class Forbidden(ProblemError):
    status = HTTP_403_FORBIDDEN
    slug = "forbidden"
    title = "Not allowed for this API key"


class NotFound(ProblemError):
    status = HTTP_404_NOT_FOUND
    slug = "not-found"
    title = "Not found"


class Conflict(ProblemError):
    status = HTTP_409_CONFLICT
    slug = "conflict"
    title = "Conflict"


class VersionConflict(Conflict):
    slug = "version-conflict"
    title = "Stale version"


class PreconditionFailed(ProblemError):
    status = HTTP_412_PRECONDITION_FAILED
    slug = "precondition-failed"
    title = "If-Match does not match the current version"


class Invalid(ProblemError):
    status = HTTP_422_UNPROCESSABLE_ENTITY
    slug = "validation"
    title = "Invalid field"


class Unavailable(ProblemError):
    """A dependency of this one request (tool-vault) is down: not the client's mistake."""

    status = HTTP_503_SERVICE_UNAVAILABLE
    slug = "unavailable"
    title = "Service unavailable"


def _nul_at(value: Any, path: str) -> str | None:
    """The JSON path (`config.notes`, `functions[0].name`) of the first string holding U+0000."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if "\x00" in key:
                return where.replace("\x00", "\\u0000")
            if (found := _nul_at(item, where)) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _nul_at(item, f"{path}[{index}]")) is not None:
                return found
    return None


async def refuse_nul_characters(request: Request[Any, Any, Any]) -> None:
    """Before every handler: PostgreSQL text and jsonb cannot hold U+0000, so a NUL in a path
    parameter (404: it names nothing), a query parameter or a JSON body (422) is refused here,
    naming the field, rather than failing in the database."""
    scope = request.scope
    # Every GET passes here: look at the raw path and query first, parse them only on a hit.
    if "\x00" in scope["path"] or b"%00" in scope["query_string"]:
        _refuse_nul_in_path_or_query(request)
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    body = await request.body()
    # JSON can only spell U+0000 as this escape (a raw NUL is not JSON: a 400 later).
    if b"\\u0000" not in body:
        return
    try:
        where = _nul_at(msgspec.json.decode(body), "")
    except msgspec.DecodeError:
        return  # not JSON: the body's own decoding answers 400
    if where is not None:
        field = re.split(r"[.\[]", where, maxsplit=1)[0] or None
        raise Invalid(
            f"{where} contains a NUL character (U+0000)", field=field, json_path=f"$.{where}"
        )


def _refuse_nul_in_path_or_query(request: Request[Any, Any, Any]) -> None:
    for name, value in request.path_params.items():
        if isinstance(value, str) and "\x00" in value:
            raise NotFound(f"{name} contains a NUL character", field=name)
    for name, value in request.query_params.multi_items():
        if "\x00" in name or "\x00" in value:
            name = name.replace("\x00", "\\u0000")
            raise Invalid(f"{name} contains a NUL character", field=name)


def _request_id(request: Request[Any, Any, Any]) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


def problem_response(
    request: Request[Any, Any, Any],
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    field: str | None = None,
    json_path: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    body = Problem(
        type=_TYPE_BASE + slug,
        title=title,
        status=status,
        detail=detail,
        field=field,
        json_path=json_path,
        request_id=_request_id(request),
    )
    return Response(
        msgspec.json.encode(body), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def _problem_error(request: Request[Any, Any, Any], exc: ProblemError) -> Response[bytes]:
    headers = {"WWW-Authenticate": 'Bearer realm="voiceagents"'} if exc.status == 401 else None
    return problem_response(
        request,
        exc.status,
        exc.slug,
        exc.title,
        exc.detail,
        field=exc.field,
        json_path=exc.json_path,
        headers=headers,
    )


def _validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    """Litestar's validation of path, query and body values. A body that is not JSON at all is
    a 400; a JSON body whose fields are wrong is a 422 naming the field."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    first: dict[str, Any] = extra[0] if extra and isinstance(extra[0], dict) else {}
    message = str(first.get("message", exc.detail))
    key = str(first.get("key", "")) or None
    source = first.get("source")
    if source == "body" and key == "data":
        if message in ("'data'", "data"):
            return problem_response(
                request,
                HTTP_400_BAD_REQUEST,
                "malformed-body",
                "Malformed request body",
                "the request needs a JSON body",
            )
        key = None
    match = _AT_PATH.search(message)
    if match:
        nested = match.group(1)
        key = nested if key is None else f"{key}.{nested}" if not nested.startswith(key) else nested
        message = message[: match.start()]
    if message.startswith(("Object contains unknown field", "Object missing required field")):
        named = message.split("`")[1] if "`" in message else ""
        key = f"{key}.{named}" if key and named and match else named or key
    if source in ("path",):
        return problem_response(
            request, HTTP_404_NOT_FOUND, "not-found", "Not found", f"{key}: {message}", field=key
        )
    where = f"{key}: " if key else ""
    return problem_response(
        request,
        HTTP_422_UNPROCESSABLE_ENTITY,
        "validation",
        "Invalid field",
        f"{where}{message}",
        field=key,
    )


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    if isinstance(exc, NotAuthorizedException):
        return _problem_error(request, Unauthorized(exc.detail))
    if isinstance(exc, NotFoundException):
        return problem_response(request, status, "not-found", "Not found", "no such resource")
    if status == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        return problem_response(
            request, status, "too-large", "Request body too large", "the body exceeds 1 MiB"
        )
    if status == HTTP_400_BAD_REQUEST:
        # Litestar's decoder failed: the body is not JSON.
        return problem_response(
            request,
            status,
            "malformed-body",
            "Malformed request body",
            f"the body is not valid JSON: {exc.detail}",
        )
    if status == HTTP_405_METHOD_NOT_ALLOWED:
        return problem_response(request, status, "method-not-allowed", "Method not allowed", "")
    if status >= HTTP_500_INTERNAL_SERVER_ERROR:
        return _unexpected(request, exc)
    return problem_response(request, status, "http-error", exc.detail, exc.detail)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.error("unhandled error", path=request.url.path, exc_info=exc)
    return problem_response(
        request,
        HTTP_500_INTERNAL_SERVER_ERROR,
        "internal",
        "Internal error",
        "the registry failed to answer; the request id identifies it in the logs",
    )


EXCEPTION_HANDLERS: Any = {
    ProblemError: _problem_error,
    ValidationException: _validation_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
