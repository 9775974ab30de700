"""The TAP seam against a local, scripted, fault-injecting service (tests.fakes.tapserver)."""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Iterator

import pytest
import requests
from fakes import FakeSleep, FakeTap, Fault, dachs_error
from fakes.tapserver import recorded_rows, recorded_specs

from mirror.errors import PermanentError, RateLimitError, TransientError
from mirror.harvest.tap import Limits, TapClient
from mirror.http import HostBearer, check_response, retry_after_seconds
from mirror.retry import RetryPolicy

TOKEN = "s3cr3t-t0ken-value-0123456789"
QUERY = "SELECT TOP 3 obs_publisher_did FROM ivoa.obscore ORDER BY obs_publisher_did"


@pytest.fixture
def tap() -> Iterator[FakeTap]:
    with FakeTap(hard_limit=7).load_recorded() as server:
        yield server


@pytest.fixture
def other() -> Iterator[FakeTap]:
    """A second service, on another port, reached by another host name."""
    with FakeTap(hard_limit=7, host="localhost").load_recorded() as server:
        yield server


def client_for(server: FakeTap, *, attempts: int = 4, token: str | None = None,
               timeout: float = 10.0) -> tuple[TapClient, FakeSleep]:
    sleep = FakeSleep()
    policy = RetryPolicy(attempts=attempts, sleep=sleep, rng=lambda: 0.5)
    return TapClient(server.url, token=token, policy=policy, timeout=timeout), sleep


def csv_ids(body: bytes) -> list[str]:
    return body.decode().splitlines()[1:]


def first_ids(n: int) -> list[str]:
    return sorted(r["obs_publisher_did"] for r in recorded_rows())[:n]


# -- answers and faults ------------------------------------------------------------------------


def test_csv_answer_holds_the_rows_asked_for(tap: FakeTap) -> None:
    client, sleep = client_for(tap)
    assert csv_ids(client.csv(QUERY)) == first_ids(3)
    assert sleep.delays == []
    assert tap.received[-1].params["FORMAT"] == "csv"


def test_503_then_200_is_retried_once(tap: FakeTap) -> None:
    tap.inject(Fault(503))
    client, sleep = client_for(tap)
    assert csv_ids(client.csv(QUERY)) == first_ids(3)
    assert len(sleep.delays) == 1
    assert [r.fault for r in tap.received] == ["status", None]


def test_429_retry_after_is_the_recorded_sleep(tap: FakeTap) -> None:
    tap.inject(Fault(429, headers={"Retry-After": "2"}))
    client, sleep = client_for(tap)
    assert csv_ids(client.csv(QUERY)) == first_ids(3)
    assert sleep.delays == [2.0]


def test_429_is_a_rate_limit_error_carrying_retry_after(tap: FakeTap) -> None:
    tap.inject(Fault(429, headers={"Retry-After": "7"}))
    client, sleep = client_for(tap, attempts=1)
    with pytest.raises(RateLimitError) as info:
        client.csv(QUERY)
    assert info.value.retry_after == 7.0
    assert info.value.status == 429
    assert sleep.delays == []


def test_400_with_dachs_votable_error_is_permanent_and_carries_the_message(tap: FakeTap) -> None:
    message = "Could not parse your query: Expected end of text, found 'FORM' (at char 9)"
    tap.inject(Fault(400, body=dachs_error(message), times=5))
    client, sleep = client_for(tap)
    with pytest.raises(PermanentError) as info:
        client.csv(QUERY)
    assert message in info.value.message
    assert info.value.status == 400
    assert sleep.delays == []
    assert len(tap.received) == 1  # not retried


def test_query_the_service_cannot_run_is_permanent_with_its_reason(tap: FakeTap) -> None:
    client, _ = client_for(tap)
    with pytest.raises(PermanentError) as info:
        client.csv("SELECT no_such_column FROM ivoa.obscore")
    assert "no_such_column" in info.value.message
    assert len(tap.received) == 1


@pytest.mark.parametrize("action", ["reset", "close"])
def test_broken_connection_is_transient(tap: FakeTap, action: str) -> None:
    tap.inject(Fault(action=action))
    client, _ = client_for(tap, attempts=1)
    with pytest.raises(TransientError):
        client.csv(QUERY)


@pytest.mark.parametrize("action", ["reset", "close"])
def test_broken_connection_is_retried_to_success(tap: FakeTap, action: str) -> None:
    tap.inject(Fault(action=action, times=2))
    client, sleep = client_for(tap)
    assert csv_ids(client.csv(QUERY)) == first_ids(3)
    assert len(sleep.delays) == 2


def test_connection_dropped_in_the_middle_of_the_body_is_transient(tap: FakeTap) -> None:
    tap.inject(Fault(action="truncate"))
    client, _ = client_for(tap, attempts=1)
    with pytest.raises(TransientError):
        client.csv(QUERY)


def test_read_timeout_is_transient(tap: FakeTap) -> None:
    tap.inject(Fault(action="stall", delay=1.5))
    client, _ = client_for(tap, attempts=1, timeout=0.3)
    with pytest.raises(TransientError):
        client.csv(QUERY)


def test_nothing_listening_is_transient() -> None:
    with FakeTap() as server:
        url = server.url
    client = TapClient(url, policy=RetryPolicy(attempts=1, sleep=FakeSleep()))
    with pytest.raises(TransientError):
        client.csv(QUERY)


def test_retries_stop_after_the_configured_attempts(tap: FakeTap) -> None:
    tap.inject(Fault(502, times=100))
    client, sleep = client_for(tap, attempts=3)
    with pytest.raises(TransientError) as info:
        client.csv(QUERY)
    assert info.value.status == 502
    assert len(tap.received) == 3
    assert len(sleep.delays) == 2


@pytest.mark.parametrize("status", [408, 425, 500, 502, 503, 504])
def test_statuses_worth_retrying_are_transient(status: int) -> None:
    response = requests.Response()
    response.status_code = status
    response._content = b""
    with pytest.raises(TransientError) as info:
        check_response(response, "http://127.0.0.1/tap/sync")
    assert info.value.status == status


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413])
def test_client_errors_are_permanent(status: int) -> None:
    response = requests.Response()
    response.status_code = status
    response._content = b"nope"
    with pytest.raises(PermanentError) as info:
        check_response(response, "http://127.0.0.1/tap/sync")
    assert info.value.status == status
    assert not isinstance(info.value, TransientError)


# -- Retry-After ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0, 1, 2, 120])
def test_retry_after_seconds_reads_a_number(seconds: int) -> None:
    assert retry_after_seconds(str(seconds)) == float(seconds)


def test_retry_after_seconds_reads_an_http_date() -> None:
    now = float(int(time.time()))
    for ahead in (5, 90, 3600):
        value = email.utils.formatdate(now + ahead, usegmt=True)
        assert retry_after_seconds(value, now=now) == pytest.approx(ahead)


def test_retry_after_in_the_past_means_no_wait() -> None:
    now = float(int(time.time()))
    assert retry_after_seconds(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0
    assert retry_after_seconds("-5") == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "Tuesday-ish"])
def test_retry_after_that_cannot_be_read_is_none(value: str | None) -> None:
    assert retry_after_seconds(value) is None


def test_429_with_http_date_retry_after_waits_until_then(tap: FakeTap) -> None:
    tap.inject(Fault(429, headers={"Retry-After": email.utils.formatdate(
        time.time() + 30, usegmt=True)}))
    client, sleep = client_for(tap)
    client.csv(QUERY)
    assert len(sleep.delays) == 1
    assert 25 <= sleep.delays[0] <= 30


# -- capabilities and metadata --------------------------------------------------------------------


@pytest.mark.parametrize("hard", [7, 500])
def test_limits_come_from_the_capabilities(hard: int) -> None:
    with FakeTap(hard_limit=hard) as server:
        client, _ = client_for(server)
        assert client.limits() == Limits(hard, hard)


def test_limits_are_unknown_when_capabilities_are_missing() -> None:
    with FakeTap(capabilities=False) as server:
        client, sleep = client_for(server)
        assert client.limits() == Limits(None, None)
        assert sleep.delays == []


def test_limits_are_retried_on_transient_capability_failure(tap: FakeTap) -> None:
    tap.inject(Fault(503, match="capabilities"))
    client, sleep = client_for(tap)
    assert client.limits() == Limits(tap.hard_limit, tap.hard_limit)
    assert len(sleep.delays) == 1


def test_capabilities_request_honours_the_timeout(tap: FakeTap) -> None:
    tap.inject(Fault(action="stall", delay=2.0, match="capabilities"))
    client, _ = client_for(tap, attempts=1, timeout=0.3)
    started = time.monotonic()
    try:
        client.limits()
    except TransientError:
        pass
    assert time.monotonic() - started < 1.5


def test_columns_describe_every_field_the_service_publishes(tap: FakeTap) -> None:
    client, _ = client_for(tap)
    got = client.columns("ivoa.obscore")
    want = recorded_specs()
    assert [c.name for c in got] == [c.name for c in want]
    for g, w in zip(got, want, strict=True):
        assert (g.datatype, g.arraysize, g.xtype, g.ucd, g.utype, g.unit, g.null_value) == (
            w.datatype, w.arraysize, w.xtype, w.ucd, w.utype, w.unit, w.null_value), g.name
        assert g.description == w.description
    sent = tap.received[-1].params
    assert sent["MAXREC"] == "0" and "TOP 0" in sent["QUERY"]


def test_table_answers_votable_rows(tap: FakeTap) -> None:
    client, _ = client_for(tap)
    table = client.table(QUERY)
    assert list(table["obs_publisher_did"]) == first_ids(3)
    assert tap.received[-1].params["FORMAT"] == "votable"


def test_csv_passes_maxrec_to_the_service(tap: FakeTap) -> None:
    client, _ = client_for(tap)
    client.csv(QUERY, maxrec=3)
    assert tap.received[-1].params["MAXREC"] == "3"


# -- the bearer token ------------------------------------------------------------------------------


def test_token_is_sent_to_the_service(tap: FakeTap) -> None:
    client, _ = client_for(tap, token=TOKEN)
    client.csv(QUERY)
    assert tap.received[-1].headers.get("Authorization") == f"Bearer {TOKEN}"


def test_no_token_means_no_authorization_header(tap: FakeTap) -> None:
    client, _ = client_for(tap)
    client.csv(QUERY)
    assert "Authorization" not in tap.received[-1].headers


def test_token_is_not_sent_to_another_host(tap: FakeTap, other: FakeTap) -> None:
    client, _ = client_for(tap, token=TOKEN)
    client.session.post(other.url + "/sync", data={"QUERY": QUERY, "FORMAT": "csv"}, timeout=10)
    assert len(other.received) == 1
    assert "Authorization" not in other.received[0].headers


def test_token_is_not_sent_to_another_port_of_the_same_host(tap: FakeTap) -> None:
    with FakeTap(hard_limit=7, host=tap.host).load_recorded() as neighbour:
        client, _ = client_for(tap, token=TOKEN)
        client.session.post(neighbour.url + "/sync", data={"QUERY": QUERY, "FORMAT": "csv"},
                            timeout=10)
        assert len(neighbour.received) == 1
        assert "Authorization" not in neighbour.received[0].headers


def test_token_is_not_carried_across_a_redirect_to_another_host(tap: FakeTap,
                                                                other: FakeTap) -> None:
    tap.inject(Fault(307, headers={"Location": other.url + "/sync"}))
    client, _ = client_for(tap, token=TOKEN)
    assert csv_ids(client.csv(QUERY)) == first_ids(3)
    assert tap.received[0].headers.get("Authorization") == f"Bearer {TOKEN}"
    assert len(other.received) == 1
    assert "Authorization" not in other.received[0].headers


def test_token_never_appears_in_repr() -> None:
    auth = HostBearer(TOKEN, "127.0.0.1")
    client = TapClient("http://127.0.0.1:9/tap", token=TOKEN)
    for text in (repr(auth), str(auth), repr(client.session.auth), repr(vars(client)),
                 repr(vars(client.session))):
        assert TOKEN not in text
    assert "127.0.0.1" in repr(auth)


def test_token_never_appears_in_log_records(tap: FakeTap,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    tap.inject(Fault(503), Fault(401, body=dachs_error("Authentication failed"), match="TOP 5"))
    client, _ = client_for(tap, token=TOKEN)
    client.csv(QUERY)
    with pytest.raises(PermanentError) as info:
        client.csv(QUERY.replace("TOP 3", "TOP 5"))
    assert tap.received[0].headers.get("Authorization") == f"Bearer {TOKEN}"
    assert caplog.records, "the retry should have been logged"
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
    assert TOKEN not in str(info.value)
