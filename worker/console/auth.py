"""Who is asking, and what they may do.

- **Bearer tokens** (RFC 6750, ``Authorization: Bearer <token>``) for the API: each token
  belongs to one user (`ConsoleUser`), whose role is ``viewer`` (reads) or ``operator`` (reads
  and acts). Tokens are compared by their SHA-256, so the settings may hold the digest only.
- **A session cookie** for the browser, after signing in with a token (the login form, or
  ``?token=`` in the address the worker prints at start-up): the user, role, a CSRF token and an
  expiry, signed with HMAC-SHA256 (``console_secret``). ``HttpOnly`` and ``SameSite=Strict``.
- **Cross-site requests**: a request that changes something and is authenticated by the cookie
  must carry the session's CSRF token (header ``X-CSRF-Token`` or form field ``csrf_token``),
  and its ``Origin``, when the browser sends one, must be the console's own. Bearer requests
  need neither: a browser never adds that header by itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from worker.config import ConsoleUser

VIEWER = "viewer"
OPERATOR = "operator"
SESSION_COOKIE = "wfw_console"
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def can_act(self) -> bool:
        return self.role == OPERATOR


@dataclass(frozen=True)
class Principal:
    """An authenticated request: who, and how (``bearer`` or ``session``)."""

    user: User
    via: str
    csrf: str | None = None  # the session's CSRF token (via session)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    def __init__(self, users: list[ConsoleUser], secret: bytes | None = None) -> None:
        """``users``: none means one operator, ``local``, with a token made here
        (`generated_token`)."""
        self.generated_token: str | None = None
        if not users:
            self.generated_token = secrets.token_urlsafe(24)
            users = [ConsoleUser(name="local", role="operator", token=self.generated_token)]
        self._by_digest: dict[str, User] = {}
        for user in users:
            key = (
                digest(user.token.get_secret_value())
                if user.token is not None
                else str(user.token_sha256)
            )
            self._by_digest[key] = User(user.name, user.role)
        self._secret = secret or secrets.token_bytes(32)

    def by_token(self, token: str) -> User | None:
        if not token:
            return None
        wanted = digest(token)
        for key, user in self._by_digest.items():  # constant time per entry
            if hmac.compare_digest(key, wanted):
                return user
        return None

    def by_authorization(self, header: str | None) -> User | None:
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.by_token(token.strip())

    # --- sessions ------------------------------------------------------------------------

    def session_cookie(self, user: User, seconds: int = SESSION_SECONDS) -> str:
        payload = {
            "u": user.name,
            "r": user.role,
            "c": secrets.token_urlsafe(18),
            "e": int(time.time()) + seconds,
        }
        body = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
        return f"{body}.{self._sign(body)}"

    def from_cookie(self, value: str | None) -> Principal | None:
        if not value or "." not in value:
            return None
        body, _, signature = value.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        try:
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            if int(payload["e"]) < time.time():
                return None
            user = User(str(payload["u"]), str(payload["r"]))
            csrf = str(payload["c"])
        except (ValueError, KeyError, TypeError):
            return None
        if user not in self._by_digest.values():
            return None  # the user was removed from the settings since
        return Principal(user, "session", csrf)

    def _sign(self, body: str) -> str:
        mac = hmac.new(self._secret, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def csrf_ok(principal: Principal, sent: str | None) -> bool:
    if principal.via != "session":
        return True
    return (
        bool(sent)
        and principal.csrf is not None
        and hmac.compare_digest(principal.csrf, sent or "")
    )


def same_origin(origin: str | None, scheme: str, host: str | None) -> bool:
    """A request's ``Origin`` (when sent) is the console's own address."""
    if origin is None:
        return True
    if origin == "null" or host is None:
        return False
    return origin.rstrip("/") == f"{scheme}://{host}"
