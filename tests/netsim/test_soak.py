"""netsim bench soak's figures: the round pace from round starts, and this process's trio tasks."""

from __future__ import annotations

import trio
import trio.testing

from netsim.soak import PACE_WINDOW, footprint, pace


def test_pace_reports_each_end_of_the_job_and_the_stalls() -> None:
    starts = [0.1 * i for i in range(PACE_WINDOW)]
    starts += [starts[-1] + 14.1 * (i + 1) for i in range(PACE_WINDOW)]  # the last rounds stall 14.1 s each
    figures = pace(starts)
    assert figures["first"] == {"median_s": 0.1, "p95_s": 0.1}
    assert figures["last"] == {"median_s": 14.1, "p95_s": 14.1}
    assert figures["max_gap_s"] == 14.1 and figures["gaps_over_1s"] == PACE_WINDOW
    assert pace([5.0])["first"] == {"median_s": None, "p95_s": None}


async def test_footprint_counts_live_trio_tasks() -> None:
    before = footprint()
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(trio.sleep_forever)
        await trio.testing.wait_all_tasks_blocked()
        during = footprint()
        nursery.cancel_scope.cancel()
    assert during.trio_tasks == before.trio_tasks + 3
    assert during.rss_mb > 0
