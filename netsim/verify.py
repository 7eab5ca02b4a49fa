"""Judging what was observed: every stored result against the plaintext, and who lacks which round.

Pure functions over the answers netsim/observe.py collected; `check_result` is the workload's
exact check (netsim/workloads.py: the digest over exactly the result's participants, and the
decoded values within the kind's error bound). A round's verdict is one word:
exact, aborted (no peer holds a result), missing (a peer up since the round opened lacks it),
split (two participant sets were committed for one round) or mismatch (a result is wrong).
Next: netsim/report.py renders the verdicts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: A workload's check of one stored result: the list of problems, empty when it is exact.
ResultCheck = Callable[[dict[str, Any]], list[str]]
#: The verdicts a run passes with ("noised": every node holds the same result, whose sum carries
#: differential-privacy noise netsim cannot replay).
PASSING = ("exact", "aborted", "noised")


def rounds_missing(held: dict[int, set[int]]) -> dict[int, list[int]]:
    """Peer index -> the rounds it lacks that some other peer holds (given each peer's held rounds)."""
    everywhere = set().union(*held.values()) if held else set()
    return {peer: sorted(everywhere - rounds) for peer, rounds in held.items() if rounds != everywhere}


def held_rounds(views: dict[int, list[dict[str, Any]] | None]) -> dict[int, set[int]]:
    """Peer index -> the rounds of the results it stores (no answer: none)."""
    return {index: {x["round"] for x in view or []} for index, view in views.items()}


def check_round(check_result: ResultCheck, have: dict[int, dict[str, Any]], missing: list[int]) -> dict[str, Any]:
    """One round's verdict from the result each holder stores (`have`) and the peers that should hold
    it and do not (`missing`)."""
    mismatches = {}
    for index, result in have.items():
        problems = check_result(result)
        if problems:
            mismatches[str(index)] = problems
    digests = sorted({res["digest"] for res in have.values()})
    if mismatches:
        verdict = "mismatch"
    elif not have:
        verdict = "aborted"
    elif missing:
        verdict = "missing"
    elif len(digests) > 1:
        verdict = "split"  # different participant sets committed for one round
    else:
        verdict = "exact"
    return {"verdict": verdict, "peers_with_result": len(have), "missing": missing, "mismatches": mismatches,
            "digests": len(digests)}


def final_check(check_result: ResultCheck, views: dict[int, list[dict[str, Any]] | None]) -> dict[str, Any]:
    """Every result every live peer holds at the end (peer index -> its stored results), including
    rounds caught up after a restart; a round a live peer still lacks fails the run too."""
    missing = rounds_missing(held_rounds(views))
    checked = mismatches = 0
    offending = []
    for index, results in views.items():
        for result in results or []:
            checked += 1
            problems = check_result(result)
            if problems:
                mismatches += 1
                offending.append({"peer": index, "round": result["round"], "problems": problems})
    for index, rounds in missing.items():
        offending += [{"peer": index, "round": r, "problems": ["missing: never fetched"]} for r in rounds]
    return {"results_checked": checked, "mismatches": mismatches, "missing": sum(map(len, missing.values())),
            "offending": offending}
