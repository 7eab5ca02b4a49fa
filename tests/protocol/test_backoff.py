"""One retry schedule: delays, cap, and how long to keep going."""

from __future__ import annotations

import pytest

from protocol.backoff import Backoff
from protocol.errors import LocalProtocolError


def test_the_listed_delays_then_give_up() -> None:
    backoff = Backoff((0.25, 0.5, 1.0, 2.0))
    assert [backoff.next_delay(i) for i in range(5)] == [0.25, 0.5, 1.0, 2.0, None]
    assert backoff.tries == 5


def test_a_cap_bounds_every_delay() -> None:
    assert [Backoff((0.25, 0.5, 1.0, 2.0)).capped(0.6).next_delay(i) for i in range(4)] == [0.25, 0.5, 0.6, 0.6]


def test_keep_going_repeats_the_last_delay_until_the_time_is_up() -> None:
    backoff = Backoff((2.0, 4.0, 8.0)).for_at_least(30.0)
    assert backoff.next_delay(3, elapsed=14.0) == 8.0
    assert backoff.next_delay(7, elapsed=29.9) == 8.0
    assert backoff.next_delay(7, elapsed=30.0) is None


def test_a_doubling_schedule_stops_doubling_at_its_limit() -> None:
    assert Backoff.doubling(1.0, 8.0).delays == (1.0, 2.0, 4.0, 8.0)
    assert Backoff.doubling(6.0, 30.0).delays == (6.0, 12.0, 24.0, 30.0)
    assert Backoff.doubling(3.0, 2.0).delays == (3.0, 2.0)  # the first delay is not capped


def test_a_schedule_kept_forever_never_gives_up() -> None:
    backoff = Backoff.doubling(2.0, 20.0).forever()
    assert [backoff.next_delay(i) for i in (0, 3, 4, 1000)] == [2.0, 16.0, 20.0, 20.0]


@pytest.mark.parametrize("delays", [(), (-1.0,)])
def test_a_schedule_without_delays_is_refused(delays: tuple[float, ...]) -> None:
    with pytest.raises(LocalProtocolError):
        Backoff(delays)
