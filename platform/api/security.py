"""API keys (`X-API-Key` header): the read key for search/predict/images, the admin key for /sql.
The analyst key (DERMGROUND_API_ANALYST_KEY) opens /sql only: read-only SQL without admin rights.

The admin key also opens the read endpoints. With no read key configured the read endpoints are
open and `dermground serve` binds to loopback only; /sql always needs the admin or the analyst key
(closed when neither is configured).
Keys are compared with hmac.compare_digest (constant time).
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from dermground.platform.next_step import next_command
from dermground.platform.settings import Settings

API_KEY_HEADER = "X-API-Key"
# auto_error=False: a missing key is our 401 (with the header named), not FastAPI's 403.
api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)


def _secret(value: object) -> str | None:
    if value is None:
        return None
    text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return text or None


def _matches(given: str | None, expected: str | None) -> bool:
    if given is None or expected is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": API_KEY_HEADER})


def auth_mode(settings: Settings) -> str:
    return "keys" if _secret(settings.api_read_key) else "open (loopback only)"


def require_read(request: Request, given: str | None = Security(api_key_header)) -> None:
    """Dependency: a valid read (or admin) key, unless no read key is configured."""
    settings: Settings = request.app.state.settings
    read_key, admin_key = _secret(settings.api_read_key), _secret(settings.api_admin_key)
    if read_key is None:
        return
    if not (_matches(given, read_key) or _matches(given, admin_key)):
        raise _unauthorized(f"missing or wrong API key: send the read key in the {API_KEY_HEADER} header")


def require_admin(request: Request, given: str | None = Security(api_key_header)) -> None:
    """Dependency: the admin key (when none is configured, the admin endpoints are closed)."""
    admin_key = _secret(request.app.state.settings.api_admin_key)
    if admin_key is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            detail="the SQL endpoint is disabled: set DERMGROUND_API_ADMIN_KEY to enable it "
                                   f"(or use `{next_command('sql')}` on the server)")
    if not _matches(given, admin_key):
        raise _unauthorized(f"missing or wrong API key: /sql needs the admin key in the {API_KEY_HEADER} header")


def require_sql(request: Request, given: str | None = Security(api_key_header)) -> None:
    """Dependency for /sql: the admin key or the analyst key (closed when neither is configured)."""
    settings: Settings = request.app.state.settings
    admin_key, analyst_key = _secret(settings.api_admin_key), _secret(settings.api_analyst_key)
    if admin_key is None and analyst_key is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            detail="the SQL endpoint is disabled: set DERMGROUND_API_ANALYST_KEY (read-only SQL) "
                                   f"or DERMGROUND_API_ADMIN_KEY to enable it "
                                   f"(or use `{next_command('sql')}` on the server)")
    if not (_matches(given, admin_key) or _matches(given, analyst_key)):
        raise _unauthorized(f"missing or wrong API key: /sql needs the analyst or admin key in the "
                            f"{API_KEY_HEADER} header")
