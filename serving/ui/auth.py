"""Sign-in for the web page: the manager pastes the service's API token once; the browser then holds
a signed session cookie, never the token itself.

Cookie value: ``<issued_at>.<hex HMAC-SHA256(key=API token, msg="revcast-ui-session:<issued_at>")>``.
It proves the holder knew the token at ``issued_at``; it expires after ``SESSION_MAX_AGE_S`` and stops
working as soon as the token is rotated. Cookie flags: ``HttpOnly`` (no script access),
``SameSite=Strict`` (never sent on cross-site requests, which is the CSRF defence of the POST forms,
together with an Origin check), ``Path=/ui``, and ``Secure`` whenever the request arrived over https
(directly or per ``X-Forwarded-Proto`` from a trusted proxy). On plain-http loopback (development,
tests) the cookie is sent without ``Secure``, because browsers drop Secure cookies set over http;
serve the page over https anywhere else.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SESSION_COOKIE = "revcast_ui_session"
SESSION_MAX_AGE_S = 12 * 3600
_CONTEXT = b"revcast-ui-session:"


def _mac(token: str, issued_at: int) -> str:
    return hmac.new(token.encode(), _CONTEXT + str(issued_at).encode(), hashlib.sha256).hexdigest()


def session_value(token: str, issued_at: int | None = None) -> str:
    """The cookie value for a session opened now (or at ``issued_at``, seconds since the epoch)."""
    issued = int(time.time()) if issued_at is None else int(issued_at)
    return f"{issued}.{_mac(token, issued)}"


def session_is_valid(
    value: str | None, token: str | None, now: float | None = None, max_age_s: int = SESSION_MAX_AGE_S
) -> bool:
    """Whether a cookie value was issued with ``token`` and has not expired (nor lies in the future).

    Args:
        value: The cookie value (None when absent).
        token: The configured API token (None/empty: nobody can sign in).
        now: Current time in seconds (default: ``time.time()``).
        max_age_s: Session lifetime.
    """
    if not value or not token:
        return False
    issued_text, _, mac = value.partition(".")
    if not issued_text.isdigit() or not mac:
        return False
    issued = int(issued_text)
    current = time.time() if now is None else now
    if not (current - max_age_s <= issued <= current + 60):
        return False
    return hmac.compare_digest(mac, _mac(token, issued))


def token_matches(given: str | None, token: str | None) -> bool:
    """Constant-time comparison of a pasted/bearer token with the configured one."""
    if not given or not token:
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


class SignInThrottle:
    """Failed sign-ins per client address: after ``max_failures`` within ``window_s`` seconds, that
    address may not try again for ``lockout_s`` seconds.

    Guessing a token through the form is then slow (5 guesses a minute by default) even when an
    operator chose a short one. State is in memory, per worker process: a restart clears it, and
    behind a proxy every visitor shares the proxy's address (a lockout then holds for everyone
    until it expires; the API's bearer token keeps working for scripts).

    Args:
        max_failures: Failed attempts allowed within the window.
        window_s: Length of the window in seconds.
        lockout_s: How long an address is refused once it has used up its attempts.
        max_addresses: Addresses tracked at most (the oldest are forgotten first), so a flood of
            addresses cannot grow memory without bound.
    """

    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 60.0,
        lockout_s: float = 60.0,
        max_addresses: int = 10_000,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.max_addresses = max_addresses
        self._failures: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}

    def retry_after(self, address: str, now: float | None = None) -> float:
        """Seconds until ``address`` may try again (0 when it may try now)."""
        current = time.monotonic() if now is None else now
        until = self._locked_until.get(address, 0.0)
        if until <= current:
            self._locked_until.pop(address, None)
            return 0.0
        return until - current

    def failed(self, address: str, now: float | None = None) -> None:
        """Count a failed attempt of ``address`` (and lock it out when it was the last allowed)."""
        current = time.monotonic() if now is None else now
        recent = [t for t in self._failures.pop(address, []) if current - t < self.window_s]
        recent.append(current)
        if len(recent) >= self.max_failures:
            self._locked_until[address] = current + self.lockout_s
            recent = []
        if recent:
            self._failures[address] = recent  # re-inserted last: dict order is least recently failed first
        while len(self._failures) > self.max_addresses:
            del self._failures[next(iter(self._failures))]
        while len(self._locked_until) > self.max_addresses:
            del self._locked_until[next(iter(self._locked_until))]

    def succeeded(self, address: str) -> None:
        """Forget ``address``'s failures after a successful sign-in."""
        self._failures.pop(address, None)
