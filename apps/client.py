"""The dashboard's side of the Rastro REST API: log in, list devices, read positions.

One :class:`ApiClient` per browser session.  Transport failures and refusals become
one small exception tree, so the dashboard can say exactly what went wrong: the API
cannot be reached, the login was refused, or the token stopped being accepted.
The token is held here and never logged.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx
import structlog

log = structlog.get_logger("rastro.apps.client")

API_PREFIX = "/api/v1"


class ApiError(Exception):
    """The API did not give the dashboard what it asked for."""


class ApiUnreachableError(ApiError):
    """No answer from the API address (refused, timed out, name unknown)."""


class LoginRejectedError(ApiError):
    """The API refused the user name and password (HTTP 401)."""


class SessionExpiredError(ApiError):
    """The API no longer accepts the session's token (HTTP 401 after login)."""


class ApiClient:
    """An authenticated connection to one Rastro API.

    Parameters
    ----------
    base_url
        The API's address, e.g. ``http://127.0.0.1:8080``; the ``/api/v1`` prefix
        is added here.
    timeout_s
        Seconds to wait for each request before calling the API unreachable.
    """

    def __init__(self, base_url: str, *, timeout_s: float = 5.0) -> None:
        check_api_url(base_url)
        self.base_url = base_url.rstrip("/")
        self._token: str | None = None
        self._http = httpx.AsyncClient(
            base_url=self.base_url + API_PREFIX, timeout=timeout_s
        )

    @property
    def logged_in(self) -> bool:
        """Whether a token is held."""
        return self._token is not None

    async def login(self, user: str, password: str) -> None:
        """Exchange a user name and password for a bearer token."""
        response = await self._send(
            "POST", "/session", json={"user": user, "password": password}
        )
        if response.status_code == httpx.codes.UNAUTHORIZED:
            raise LoginRejectedError("wrong user name or password")
        _raise_for_status(response, "log in")

        token = response.json().get("token")
        if not isinstance(token, str) or not token:
            raise ApiError("the API's login answer carries no token")
        self._token = token
        log.info("dashboard_login", user=user, api=self.base_url)

    def logout(self) -> None:
        """Forget the token."""
        self._token = None

    async def devices(self) -> list[dict[str, Any]]:
        """Every device the user may see."""
        return await self._get_list("/devices")

    async def latest_positions(self) -> list[dict[str, Any]]:
        """The newest position of every device."""
        return await self._get_list("/positions/latest")

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _get_list(self, path: str) -> list[dict[str, Any]]:
        if self._token is None:
            raise SessionExpiredError("not logged in")

        headers = {"Authorization": f"Bearer {self._token}"}
        response = await self._send("GET", path, headers=headers)
        if response.status_code == httpx.codes.UNAUTHORIZED:
            self._token = None
            raise SessionExpiredError("the API no longer accepts this session")
        _raise_for_status(response, f"read {path}")

        body = response.json()
        if not isinstance(body, list):
            message = f"GET {path} answered {type(body).__name__}, not a list"
            raise ApiError(message)
        return body

    async def _send(self, method: str, path: str, **options: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **options)
        except httpx.TransportError as error:
            log.warning(
                "api_unreachable", api=self.base_url, path=path, reason=repr(error)
            )
            message = f"cannot reach the Rastro API at {self.base_url}"
            raise ApiUnreachableError(message) from error


def check_api_url(url: str) -> None:
    """Refuse an API address that is not an http(s) URL, naming what was given."""
    if not url.startswith(("http://", "https://")):
        message = f"api_url must start with http:// or https://, got {url!r}"
        raise ValueError(message)


def _raise_for_status(response: httpx.Response, action: str) -> None:
    if response.is_success:
        return
    message = f"the API answered HTTP {response.status_code} when asked to {action}"
    raise ApiError(message)
