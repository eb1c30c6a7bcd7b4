"""
The one send path: auth headers, error mapping, the retry policy and metadata-only logs.

Retry policy: a create POST is sent again only when the previous attempt provably never
reached Cobalt (the connection could not be opened), since Cobalt has no idempotency keys
and a duplicate EHR write is worse than an error. Everything else that may have reached
Cobalt raises with ``outcome_unknown=True``. GETs are retried on
transport errors, 429 and 5xx, with jittered backoff and ``Retry-After`` honoured.
"""

from __future__ import annotations

import copy
import email.utils
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import httpx
from pydantic import BaseModel, ValidationError

from ._config import NotGiven
from ._errors import (
    APIError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    CobaltConnectionError,
    CobaltTimeoutError,
    ConfigurationError,
    LoginRequiredError,
    NotFoundError,
    RateLimitError,
    ServerError,
)
from ._telemetry import request_span
from .models import ErrorBody
from .models._json import decode_json, is_json_error

logger = logging.getLogger("cobalt_async.http")

M = TypeVar("M", bound=BaseModel)

MAX_RETRY_AFTER = 60.0
# Failures before a byte left the machine: a create may be sent again, and is not unknown.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: LoginRequiredError,
    404: NotFoundError,
    429: RateLimitError,
}
_HINTS = {
    401: (
        "Cobalt did not accept the credentials: check client_id and client_secret "
        "(COBALT_CLIENT_ID, COBALT_CLIENT_SECRET), and that access_token was issued to them"
    ),
    403: "the EHR link expired: run Cobalt Link in update mode with this access_token",
}


@dataclass(frozen=True, slots=True)
class Credentials:
    """The three values Cobalt authenticates with. Their repr never shows them."""

    client_id: str
    client_secret: str
    access_token: str

    def __repr__(self) -> str:
        return "Credentials(client_id=***, client_secret=***, access_token=***)"

    def headers(self) -> dict[str, str]:
        # Cobalt's header names contain underscores; they are sent verbatim.
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "access_token": self.access_token,
        }


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a request that provably did not succeed is tried again."""

    max_retries: int = 2
    base_delay: float = 0.5
    max_delay: float = 8.0

    def __post_init__(self) -> None:
        if type(self.max_retries) is not int or self.max_retries < 0:
            msg = f"max_retries must be an integer >= 0, not {self.max_retries!r}"
            raise ConfigurationError(msg)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER)
        # Full jitter: concurrent clients that failed together do not retry together.
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


class Requester:
    """Sends requests to Cobalt through one ``httpx.AsyncClient``. Strictly private."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        credentials: Credentials,
        retry: RetryPolicy,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.base_path = httpx.URL(self.base_url).path.rstrip("/")
        self.retry = retry
        self.timeout: httpx.Timeout | None = None
        """Overrides the HTTP client's timeout when set (by :meth:`with_options`)."""
        self._closed = False
        self._parent: Requester | None = None
        self._headers = {**credentials.headers(), "accept": "application/json"}
        self._post_headers = {**self._headers, "content-type": "application/json"}

    @property
    def closed(self) -> bool:
        """Closed itself, or through the requester it was derived from."""
        return self._closed or (self._parent is not None and self._parent.closed)

    def close(self) -> None:
        self._closed = True

    def with_options(
        self, *, timeout: httpx.Timeout | float | None | NotGiven, max_retries: int | NotGiven
    ) -> Requester:
        """A requester on the same HTTP client, with another timeout or retry budget."""
        derived = copy.copy(self)
        derived._parent, derived._closed = self, False
        if not isinstance(timeout, NotGiven):
            derived.timeout = as_timeout(timeout)
        if not isinstance(max_retries, NotGiven):
            derived.retry = RetryPolicy(max_retries, self.retry.base_delay, self.retry.max_delay)
        return derived

    async def post(self, path: str, body: bytes, *, idempotent: bool = False) -> httpx.Response:
        """
        POST a request. A create is never re-sent once it may have reached Cobalt; an
        *idempotent* one (a read, such as a live fetch) is retried like a GET.
        """
        return await self._send("POST", path, content=body, idempotent=idempotent)

    async def get(self, path: str, params: dict[str, Any]) -> httpx.Response:
        return await self._send("GET", path, params=params, idempotent=True)

    async def delete(self, path: str) -> httpx.Response:
        """DELETE is idempotent: retried like a GET."""
        return await self._send("DELETE", path, idempotent=True)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        content: bytes | None = None,
        params: dict[str, Any] | None = None,
    ) -> httpx.Response:
        with request_span(method, self.base_path + path) as span:
            try:
                response = await self._attempts(method, path, idempotent, content, params)
            except APIStatusError as exc:
                if span is not None:
                    span.set_attribute("http.response.status_code", exc.status_code)
                raise
            if span is not None:
                span.set_attribute("http.response.status_code", response.status_code)
            return response

    async def _attempts(
        self,
        method: str,
        path: str,
        idempotent: bool,
        content: bytes | None,
        params: dict[str, Any] | None,
    ) -> httpx.Response:
        if self.closed:
            msg = "the CobaltClient is closed; create a new one (or use it inside `async with`)"
            raise ClientClosedError(msg)
        headers = self._headers if content is None else self._post_headers
        url = self.base_url + path
        for attempt in range(self.retry.max_retries + 1):
            last = attempt == self.retry.max_retries
            started = time.perf_counter()
            try:
                response = await self.http.request(
                    method,
                    url,
                    content=content,
                    params=params,
                    headers=headers,
                    timeout=self.timeout or httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                error = self._transport_error(method, path, exc, idempotent)
                if last or not (idempotent or isinstance(exc, _NOT_SENT)):
                    raise error from exc
                self._log(method, path, None, started, attempt, type(exc).__name__)
                await anyio.sleep(self.retry.delay(attempt, None))
                continue
            self._log(method, path, response.status_code, started, attempt)
            if response.is_success:
                return response
            status_error = self._status_error(method, path, response, idempotent)
            if last or not idempotent or not _retryable(response.status_code):
                raise status_error
            await anyio.sleep(self.retry.delay(attempt, status_error.retry_after))
        msg = "unreachable"
        raise AssertionError(msg)  # pragma: no cover

    def _transport_error(
        self, method: str, path: str, exc: httpx.TransportError, idempotent: bool
    ) -> CobaltConnectionError:
        sent = not isinstance(exc, _NOT_SENT)
        error_type = (
            CobaltTimeoutError
            if isinstance(exc, httpx.TimeoutException)
            else (CobaltConnectionError)
        )
        return error_type(
            f"{type(exc).__name__}: could not {'complete' if sent else 'send'} the request",
            method=method,
            path=self.base_path + path,
            outcome_unknown=sent and not idempotent,
        )

    def _status_error(
        self, method: str, path: str, response: httpx.Response, idempotent: bool
    ) -> APIStatusError:
        status = response.status_code
        try:
            body = ErrorBody.model_validate_json(response.content)
            message = body.message or f"HTTP {status}"
        except ValueError:
            # Not Cobalt's envelope (a proxy's page, say): its text is not ours to log.
            body, message = ErrorBody(), f"HTTP {status} without Cobalt's error envelope"
        hint = _HINTS.get(status)
        if status == 404 and not self.base_path.endswith("/v1"):
            hint = f"the base URL's path is {self.base_path or '/'!r}: Cobalt's API is under /v1"
        if hint is not None:
            message = f"{message} ({hint})"
        fallback = ServerError if status >= 500 else APIStatusError
        error_type = _STATUS_ERRORS.get(status, fallback)
        return error_type(
            message,
            method=method,
            path=self.base_path + path,
            status_code=status,
            error=body.error,
            retry_after=_retry_after(response),
            outcome_unknown=status >= 500 and not idempotent,
            headers=response.headers,
        )

    def _log(
        self,
        method: str,
        path: str,
        status: int | None,
        started: float,
        attempt: int,
        failure: str = "",
    ) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            elapsed_ms = (time.perf_counter() - started) * 1000
            logger.debug(
                "%s %s%s -> %s in %.1f ms (attempt %d)",
                method,
                self.base_path,
                path,
                status or failure,
                elapsed_ms,
                attempt + 1,
                extra={
                    "cobalt_method": method,
                    "cobalt_path": self.base_path + path,
                    "cobalt_status": status,
                    "cobalt_failure": failure or None,
                    "cobalt_elapsed_ms": round(elapsed_ms, 1),
                    "cobalt_attempt": attempt + 1,
                },
            )


def as_timeout(value: object) -> httpx.Timeout:
    """*value* as an ``httpx.Timeout``: seconds, ``None`` for none, or a ``Timeout``."""
    if isinstance(value, httpx.Timeout):
        return value
    if value is None:
        return httpx.Timeout(None)
    # Negated, so that NaN (which compares false) is refused too.
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        msg = f"timeout must be seconds > 0, None for none, or an httpx.Timeout; got {value!r}"
        raise ConfigurationError(msg)
    return httpx.Timeout(value)


def parse_answer(
    model: type[M], response: httpx.Response, *, problem: str, outcome_unknown: bool
) -> M:
    """
    Read Cobalt's answer as *model*.

    Raises:
        APIError: The answer is not one (a proxy's page, say); the message is *problem*,
            named by the request's method and full path.
    """
    try:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            if not is_json_error(exc):
                raise
            return model.model_validate(decode_json(response.content, exc))
    except ValidationError as exc:
        request = response.request
        raise APIError(
            problem,
            method=request.method,
            path=request.url.path,
            status_code=response.status_code,
            outcome_unknown=outcome_unknown,
        ) from exc


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
