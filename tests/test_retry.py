"""RetryPolicy: exponential backoff with jitter, caps, Retry-After, and what is retried."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fakes import FakeSleep

from mirror.errors import PermanentError, RateLimitError, TransientError
from mirror.retry import RetryPolicy


def policy(*, attempts: int = 5, base: float = 0.5, cap: float = 60.0, rng: float = 0.5,
           sleep: FakeSleep | None = None) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, base=base, cap=cap, sleep=sleep or FakeSleep(),
                       rng=lambda: rng)


def failing(errors: list[Exception], result: str = "done") -> tuple[Callable[[], str], list[int]]:
    """A function raising `errors` one per call, then returning `result`."""
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return fn, calls


# -- delay ------------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", range(1, 9))
def test_delay_stays_within_equal_jitter_bounds(attempt: int) -> None:
    base, cap = 0.5, 60.0
    full = min(cap, base * 2 ** (attempt - 1))
    assert policy(base=base, cap=cap, rng=0.0).delay(attempt) == pytest.approx(full / 2)
    assert policy(base=base, cap=cap, rng=0.999999).delay(attempt) == pytest.approx(full,
                                                                                    rel=1e-5)
    assert full / 2 <= policy(base=base, cap=cap, rng=0.37).delay(attempt) <= full


def test_delay_doubles_with_each_attempt_until_the_cap() -> None:
    p = policy(base=0.25, cap=10.0, rng=0.5)
    delays = [p.delay(a) for a in range(1, 12)]
    for earlier, later in zip(delays, delays[1:], strict=False):
        assert later == pytest.approx(min(earlier * 2, delays[-1]))
    assert max(delays) <= 10.0
    assert delays[-1] == pytest.approx(10.0 * 0.75)


def test_delay_is_never_zero() -> None:
    assert policy(rng=0.0).delay(1) > 0


def test_jitter_spreads_delays() -> None:
    assert policy(rng=0.1).delay(3) != policy(rng=0.9).delay(3)


@pytest.mark.parametrize("retry_after", [0.0, 2.0, 17.5])
def test_retry_after_is_honoured_exactly(retry_after: float) -> None:
    assert policy(rng=0.9).delay(4, retry_after=retry_after) == retry_after


def test_retry_after_is_capped() -> None:
    assert policy(cap=30.0).delay(1, retry_after=3600.0) == 30.0


def test_negative_retry_after_means_no_wait() -> None:
    assert policy().delay(1, retry_after=-5.0) == 0.0


# -- call -------------------------------------------------------------------------------------


def test_transient_errors_are_retried_until_success() -> None:
    sleep = FakeSleep()
    fn, calls = failing([TransientError("503"), TransientError("reset")])
    assert policy(sleep=sleep, rng=0.0, base=1.0).call(fn, "query") == "done"
    assert len(calls) == 3
    assert sleep.delays == [0.5, 1.0]


def test_rate_limit_waits_what_the_server_asked() -> None:
    sleep = FakeSleep()
    fn, calls = failing([RateLimitError("429", retry_after=2.0)])
    assert policy(sleep=sleep).call(fn, "query") == "done"
    assert sleep.delays == [2.0]


def test_rate_limit_without_retry_after_backs_off_exponentially() -> None:
    sleep = FakeSleep()
    fn, _ = failing([RateLimitError("429"), RateLimitError("429")])
    policy(sleep=sleep, rng=0.0, base=2.0).call(fn, "query")
    assert sleep.delays == [1.0, 2.0]


def test_permanent_error_is_not_retried() -> None:
    sleep = FakeSleep()
    fn, calls = failing([PermanentError("400 bad query")])
    with pytest.raises(PermanentError):
        policy(sleep=sleep).call(fn, "query")
    assert len(calls) == 1 and sleep.delays == []


def test_foreign_errors_are_not_retried() -> None:
    sleep = FakeSleep()
    fn, calls = failing([ValueError("bug")])
    with pytest.raises(ValueError):
        policy(sleep=sleep).call(fn, "query")
    assert len(calls) == 1 and sleep.delays == []


@pytest.mark.parametrize("attempts", [1, 2, 4])
def test_retrying_stops_after_the_configured_attempts(attempts: int) -> None:
    sleep = FakeSleep()
    errors: list[Exception] = [TransientError(f"failure {i}") for i in range(attempts + 5)]
    fn, calls = failing(errors)
    with pytest.raises(TransientError) as info:
        policy(attempts=attempts, sleep=sleep).call(fn, "query")
    assert len(calls) == attempts
    assert len(sleep.delays) == attempts - 1
    assert info.value is errors[attempts - 1]  # the last failure, not the first


def test_each_retry_is_logged_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    fn, _ = failing([TransientError("HTTP 503 from the archive")])
    with caplog.at_level("WARNING", logger="mirror"):
        policy().call(fn, "reading page 3")
    [record] = [r for r in caplog.records if r.name == "mirror"]
    assert "reading page 3" in record.getMessage()
    assert "HTTP 503 from the archive" in record.getMessage()
