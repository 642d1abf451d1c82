"""The provider circuit breaker as a state machine (a clock of the test's own), and in /healthz."""

from __future__ import annotations

import asyncio

import pytest

from handlers.circuit import CircuitBreaker
from handlers.contract import TransientDeliveryError
from tests.httpapp import live_surface


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **overrides: float) -> CircuitBreaker:
    values = {"failure_threshold": 3, "open_seconds": 10.0, "max_open_seconds": 40.0, "probe_wait": 0.5}
    return CircuitBreaker("twilio", clock=clock, **(values | overrides))  # type: ignore[arg-type]


async def refused(circuit: CircuitBreaker) -> TransientDeliveryError:
    with pytest.raises(TransientDeliveryError) as raised:
        await circuit.before_request()
    return raised.value


async def test_failures_in_a_row_open_it_and_a_success_between_them_does_not() -> None:
    clock = Clock()
    circuit = breaker(clock)
    for _ in range(2):
        await circuit.before_request()
        circuit.failed()
    circuit.succeeded()  # a success resets the count: failures must come in a row
    for _ in range(2):
        circuit.failed()
    assert circuit.state == "closed"
    circuit.failed()
    assert circuit.state == "open"
    error = await refused(circuit)
    # Not an attempt (the provider was not asked); back just when the probe may go.
    assert error.throttled and error.code == "circuit_open" and error.retry_after == pytest.approx(10.0)


async def test_one_probe_after_the_wait_its_success_closes_and_lets_the_waiters_through() -> None:
    clock = Clock()
    circuit = breaker(clock)
    for _ in range(3):
        circuit.failed()
    clock.now += 10.0
    await circuit.before_request()  # the probe
    assert circuit.state == "half_open"
    waiter = asyncio.create_task(circuit.before_request())  # arrives while the probe is out
    await asyncio.sleep(0)
    assert not waiter.done()
    circuit.succeeded()
    await asyncio.wait_for(waiter, 1)  # let through by the probe's success
    assert circuit.state == "closed" and circuit.open_for() == 0.0


async def test_a_failed_probe_opens_it_for_twice_as_long_up_to_the_maximum() -> None:
    clock = Clock()
    circuit = breaker(clock)
    for _ in range(3):
        circuit.failed()
    for expected in (20.0, 40.0, 40.0):
        clock.now += circuit.open_seconds
        await circuit.before_request()  # the probe
        circuit.failed()
        assert circuit.state == "open" and circuit.open_seconds == expected
        assert (await refused(circuit)).retry_after == pytest.approx(expected)
    assert circuit.open_for() == pytest.approx(10.0 + 20.0 + 40.0)


async def test_healthz_is_unhealthy_while_a_circuit_stays_open_too_long(db_url: str) -> None:
    clock = Clock()
    circuit = breaker(clock)
    async with live_surface(db_url, circuits=[circuit], health_max_circuit_open_seconds=60) as live:
        ok = await live.client.get("/healthz")
        assert ok.status_code == 200 and ok.json()["circuits"] == {"twilio": "closed"}
        for _ in range(3):
            circuit.failed()
        clock.now += 30
        assert (await live.client.get("/healthz")).status_code == 200  # open, but not for long
        clock.now += 31
        unhealthy = await live.client.get("/healthz")
    assert unhealthy.status_code == 503
    assert unhealthy.json()["reason"] == "twilio circuit open for 61s (limit 60s)"
    assert unhealthy.json()["circuits"] == {"twilio": "open"}


async def test_a_probe_that_never_reached_the_provider_leaves_the_next_request_to_probe() -> None:
    """A probe thrown back before its request (quota, shutdown, cancelled) gives no verdict: the
    circuit must not stay half-open for good, with every later request waiting and failing."""
    clock = Clock()
    circuit = breaker(clock)
    for _ in range(3):
        circuit.failed()
    clock.now += 10.0
    assert await circuit.before_request() is True
    circuit.probe_abandoned()
    assert circuit.state == "open"
    assert await circuit.before_request() is True  # at once, no new wait
    circuit.succeeded()
    assert circuit.state == "closed"
