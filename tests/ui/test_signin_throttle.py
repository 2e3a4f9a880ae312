"""Failed sign-ins are limited per client address, so a token cannot be guessed through the form."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.ui.auth import SignInThrottle


def test_the_throttle_locks_an_address_out_after_its_failures_and_lets_it_back_later() -> None:
    throttle = SignInThrottle(max_failures=3, window_s=60.0, lockout_s=30.0)
    for t in (0.0, 1.0):
        throttle.failed("10.0.0.1", now=t)
        assert throttle.retry_after("10.0.0.1", now=t) == 0.0
    throttle.failed("10.0.0.1", now=2.0)
    assert throttle.retry_after("10.0.0.1", now=2.0) == pytest.approx(30.0)
    assert throttle.retry_after("10.0.0.2", now=2.0) == 0.0  # other addresses are not affected
    assert throttle.retry_after("10.0.0.1", now=31.9) > 0.0
    assert throttle.retry_after("10.0.0.1", now=32.0) == 0.0
    throttle.failed("10.0.0.1", now=40.0)  # a fresh start after the lockout
    assert throttle.retry_after("10.0.0.1", now=40.0) == 0.0


def test_old_failures_fall_out_of_the_window_and_a_success_forgets_them() -> None:
    throttle = SignInThrottle(max_failures=3, window_s=10.0, lockout_s=30.0)
    throttle.failed("a", now=0.0)
    throttle.failed("a", now=1.0)
    throttle.failed("a", now=20.0)  # the first two are older than the window
    assert throttle.retry_after("a", now=20.0) == 0.0
    throttle.failed("b", now=0.0)
    throttle.failed("b", now=1.0)
    throttle.succeeded("b")
    throttle.failed("b", now=2.0)
    assert throttle.retry_after("b", now=2.0) == 0.0


def test_memory_is_bounded_by_the_number_of_addresses() -> None:
    throttle = SignInThrottle(max_failures=100, max_addresses=50)
    for i in range(500):
        throttle.failed(f"10.0.{i // 256}.{i % 256}", now=float(i))
    assert len(throttle._failures) == 50


def test_the_sign_in_form_answers_429_with_retry_after_once_the_attempts_are_used_up(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from serving.ui.app import UiSources, create_ui_app

    sources = UiSources("the-token", None, "no dataset", f"sqlite:///{tmp_path / 's.db'}", None)
    app = create_ui_app(lambda: sources, throttle=SignInThrottle(max_failures=3, lockout_s=60.0))
    with TestClient(app, base_url="http://testserver") as client:
        for _ in range(3):
            wrong = client.post("/signin", data={"token": "guess"}, follow_redirects=False)
            assert wrong.status_code == 401
        locked = client.post("/signin", data={"token": "the-token"}, follow_redirects=False)
        assert locked.status_code == 429  # even the right token waits: the address is locked out
        assert 0 < int(locked.headers["retry-after"]) <= 60
        assert "Too many failed sign-ins" in locked.text
        assert "set-cookie" not in locked.headers
