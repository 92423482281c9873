"""How the states of parts add up to the state of the whole (partitions -> task -> task request)."""

from __future__ import annotations

from collections.abc import Iterable

from infrax.model import State, is_final

# When every part is final, the worst outcome wins.
_SEVERITY = (State.EXCEPTION, State.FAILED, State.CANCELLED, State.COMPLETED)


def aggregate(states: Iterable[str], *, empty: State = State.COMPLETED) -> State:
    """A task with a failed partition is failed only once nothing else of it is still running."""
    states = [State(s) for s in states]
    if not states:
        return empty
    if not all(is_final(s) for s in states):
        if any(s in (State.RUNNING, State.DISPATCHED) for s in states) or any(is_final(s) for s in states):
            return State.RUNNING
        if all(s == State.PENDING for s in states):
            return State.PENDING
        return State.QUEUED
    for state in _SEVERITY:
        if state in states:
            return state
    return State.SKIPPED  # every part was skipped
