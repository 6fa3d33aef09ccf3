"""The stream state machine: the table, checked exhaustively, and the machine, driven at random."""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import ssesup
from ssesup.states import TRANSITIONS, CloseReason, Ending, IllegalTransition, State, StreamMachine, Transition, Trigger
from ssesup.states.machine import table_markdown

LIVE_STATES = [s for s in State if s is not State.CLOSED]
ALL_PAIRS = list(itertools.product(State, Trigger))


def pair_id(pair: tuple[State, Trigger]) -> str:
    return f"{pair[0].value}-{pair[1].value}"


def successors(state: State) -> Iterator[tuple[Trigger, State, CloseReason | None]]:
    for trigger in Trigger:
        if (state, trigger) in TRANSITIONS:
            to_state, reason, _ = TRANSITIONS[(state, trigger)]
            yield trigger, to_state, reason


def shortest_path(start: State, goal: State) -> list[Trigger] | None:
    """The shortest list of triggers that leads from ``start`` to ``goal`` through the table."""
    paths: dict[State, list[Trigger]] = {start: []}
    todo = deque([start])
    while todo:
        state = todo.popleft()
        if state is goal:
            return paths[state]
        for trigger, to_state, _ in successors(state):
            if to_state not in paths:
                paths[to_state] = [*paths[state], trigger]
                todo.append(to_state)
    return None


def machine_in(state: State) -> StreamMachine:
    """A fresh machine driven into ``state`` through legal triggers only."""
    path = shortest_path(State.OPEN, state)
    assert path is not None, f"{state} is not reachable from OPEN"
    machine = StreamMachine()
    for trigger in path:
        machine.fire(trigger)
    assert machine.state is state
    return machine


def paths_from_open(max_len: int) -> Iterator[list[tuple[Trigger, State, CloseReason | None]]]:
    """Every legal path of at most ``max_len`` triggers that starts in OPEN (the self-loop makes them infinite)."""

    def walk(state: State, path: list[tuple[Trigger, State, CloseReason | None]]) -> Iterator[list]:
        yield path
        if len(path) < max_len:
            for step in successors(state):
                yield from walk(step[1], [*path, step])

    yield from walk(State.OPEN, [])


# --------------------------------------------------------------------------------------------------
# The table itself
# --------------------------------------------------------------------------------------------------


def test_a_new_machine_is_open_without_a_close_reason() -> None:
    machine = StreamMachine()
    assert machine.state is State.OPEN
    assert machine.close_reason is None
    assert not machine.closed


def test_table_keys_and_values_are_states_triggers_and_close_reasons() -> None:
    for (state, trigger), (to_state, reason, ending) in TRANSITIONS.items():
        assert isinstance(state, State)
        assert isinstance(trigger, Trigger)
        assert isinstance(to_state, State)
        assert reason is None or isinstance(reason, CloseReason)
        assert ending is None or isinstance(ending, Ending)


def test_table_names_a_close_reason_and_an_ending_exactly_on_the_rows_that_lead_to_closed() -> None:
    for (state, trigger), (to_state, reason, ending) in TRANSITIONS.items():
        assert (reason is not None) == (to_state is State.CLOSED), (state, trigger)
        assert (ending is not None) == (to_state is State.CLOSED), (state, trigger)


def test_every_ending_appears_in_the_table() -> None:
    assert {ending for _, _, ending in TRANSITIONS.values() if ending is not None} == set(Ending)


@pytest.mark.parametrize(
    ("reason", "ending"),
    [
        (CloseReason.COMPLETED, Ending.FLUSH),
        (CloseReason.ERROR, Ending.FLUSH),
        (CloseReason.SLOW_CONSUMER, Ending.FLUSH),
        (CloseReason.DRAINED, Ending.FAREWELL),
        (CloseReason.SHUTDOWN, Ending.FAREWELL),
        (CloseReason.SEND_TIMEOUT, Ending.ABANDON),
        (CloseReason.DEAD_PEER, Ending.ABANDON),
        (CloseReason.CLIENT_DISCONNECT, Ending.GONE),
    ],
    ids=lambda v: v.value,
)
def test_each_close_reason_has_one_ending_but_error_by_a_refused_send(reason: CloseReason, ending: Ending) -> None:
    endings = {row.ending for (_, trigger), row in TRANSITIONS.items() if row.close_reason is reason}
    if reason is CloseReason.ERROR:
        # The generator's error flushes what is queued; a send the server refused writes nothing more.
        assert endings == {Ending.FLUSH, Ending.ABANDON}
        abandoned = {trigger for (_, trigger), row in TRANSITIONS.items() if row.ending is Ending.ABANDON}
        assert Trigger.SEND_FAILED in abandoned and Trigger.ERROR not in abandoned
    else:
        assert endings == {ending}


def test_architecture_md_shows_the_table_as_the_code_has_it() -> None:
    text = (Path(__file__).parent.parent / "ARCHITECTURE.md").read_text()
    assert table_markdown() in text, "the table changed: paste the output of python -m ssesup.states"


def test_closed_is_terminal_no_row_leaves_it() -> None:
    assert [key for key in TRANSITIONS if key[0] is State.CLOSED] == []


def test_every_trigger_appears_in_the_table() -> None:
    assert {trigger for _, trigger in TRANSITIONS} == set(Trigger)


def test_every_close_reason_appears_in_the_table() -> None:
    assert {reason for _, reason, _ in TRANSITIONS.values() if reason is not None} == set(CloseReason)


def test_every_state_is_reachable_from_open() -> None:
    for state in State:
        assert shortest_path(State.OPEN, state) is not None, state


@pytest.mark.parametrize("state", LIVE_STATES, ids=lambda s: s.value)
def test_every_state_other_than_closed_can_reach_closed(state: State) -> None:
    path = shortest_path(state, State.CLOSED)
    assert path  # not None, and not empty: the state is not CLOSED itself
    machine = machine_in(state)
    for trigger in path:
        machine.fire(trigger)
    assert machine.closed


@pytest.mark.parametrize("state", LIVE_STATES, ids=lambda s: s.value)
def test_every_live_state_can_close_in_one_step(state: State) -> None:
    assert any(to_state is State.CLOSED for _, to_state, _ in successors(state))


@pytest.mark.parametrize("state", LIVE_STATES, ids=lambda s: s.value)
@pytest.mark.parametrize(
    ("trigger", "reason"),
    [
        (Trigger.CLIENT_DISCONNECT, CloseReason.CLIENT_DISCONNECT),
        (Trigger.SEND_TIMEOUT, CloseReason.SEND_TIMEOUT),
        (Trigger.ERROR, CloseReason.ERROR),
        (Trigger.FORCE_CLOSE, CloseReason.SHUTDOWN),
    ],
    ids=lambda v: v.value,
)
def test_disconnect_timeout_error_and_force_close_end_every_live_state_with_their_reason(
    state: State, trigger: Trigger, reason: CloseReason
) -> None:
    assert TRANSITIONS[(state, trigger)][:2] == (State.CLOSED, reason)


def test_first_send_makes_an_open_stream_streaming() -> None:
    assert TRANSITIONS[(State.OPEN, Trigger.FIRST_SEND)] == (State.STREAMING, None, None)


def test_first_send_keeps_a_stream_that_started_draining_before_it_in_draining() -> None:
    assert TRANSITIONS[(State.DRAINING, Trigger.FIRST_SEND)] == (State.DRAINING, None, None)


def test_first_send_happens_at_most_once_while_streaming() -> None:
    assert (State.STREAMING, Trigger.FIRST_SEND) not in TRANSITIONS


@pytest.mark.parametrize("state", [State.OPEN, State.STREAMING], ids=lambda s: s.value)
def test_drain_moves_open_and_streaming_streams_to_draining(state: State) -> None:
    assert TRANSITIONS[(state, Trigger.DRAIN)] == (State.DRAINING, None, None)


def test_a_generator_that_finishes_while_streaming_completes() -> None:
    assert TRANSITIONS[(State.STREAMING, Trigger.EXHAUSTED)][:2] == (State.CLOSED, CloseReason.COMPLETED)


@pytest.mark.parametrize("trigger", [Trigger.EXHAUSTED, Trigger.DRAIN_CLOSE], ids=lambda t: t.value)
def test_a_draining_stream_that_finishes_or_gets_its_turn_is_drained(trigger: Trigger) -> None:
    assert TRANSITIONS[(State.DRAINING, trigger)][:2] == (State.CLOSED, CloseReason.DRAINED)


def test_a_draining_stream_whose_grace_runs_out_is_shut_down() -> None:
    assert TRANSITIONS[(State.DRAINING, Trigger.GRACE_EXPIRED)][:2] == (State.CLOSED, CloseReason.SHUTDOWN)


@pytest.mark.parametrize("trigger", [Trigger.DRAIN_CLOSE, Trigger.GRACE_EXPIRED], ids=lambda t: t.value)
def test_drain_close_and_grace_expired_are_legal_only_while_draining(trigger: Trigger) -> None:
    assert [state for state, t in TRANSITIONS if t is trigger] == [State.DRAINING]


def test_completed_is_reached_only_by_a_stream_that_was_streaming() -> None:
    assert [key for key, (_, reason, _) in TRANSITIONS.items() if reason is CloseReason.COMPLETED] == [
        (State.STREAMING, Trigger.EXHAUSTED)
    ]


def test_drained_is_reached_only_from_draining() -> None:
    assert {state for (state, _), (_, reason, _) in TRANSITIONS.items() if reason is CloseReason.DRAINED} == {
        State.DRAINING
    }


# --------------------------------------------------------------------------------------------------
# The machine, every (state, trigger) pair
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pair", ALL_PAIRS, ids=pair_id)
def test_every_state_trigger_pair_follows_the_table_or_raises_illegal_transition(
    pair: tuple[State, Trigger],
) -> None:
    state, trigger = pair
    machine = machine_in(state)
    reason_before = machine.close_reason
    if pair in TRANSITIONS:
        to_state, reason, ending = TRANSITIONS[pair]
        transition = machine.fire(trigger)
        assert transition == Transition(state, to_state, trigger, reason, ending)
        assert machine.state is to_state
        assert machine.close_reason == (reason if to_state is State.CLOSED else None)
        assert machine.closed == (to_state is State.CLOSED)
    else:
        with pytest.raises(IllegalTransition) as info:
            machine.fire(trigger)
        assert info.value.state is state
        assert info.value.trigger is trigger
        assert str(info.value) == f"trigger {trigger.value!r} is not legal in state {state.value!r}"
        assert machine.state is state  # an illegal trigger changes nothing
        assert machine.close_reason == reason_before


@pytest.mark.parametrize("trigger", list(Trigger), ids=lambda t: t.value)
@pytest.mark.parametrize("reason", list(CloseReason), ids=lambda r: r.value)
def test_no_trigger_leaves_closed_and_the_close_reason_stays(reason: CloseReason, trigger: Trigger) -> None:
    machine = StreamMachine()
    path = next(
        p for p in paths_from_open(4) if p and p[-1][1] is State.CLOSED and p[-1][2] is reason
    )  # some legal path that closes with this reason
    for step_trigger, _, _ in path:
        machine.fire(step_trigger)
    assert (machine.state, machine.close_reason) == (State.CLOSED, reason)
    with pytest.raises(IllegalTransition):
        machine.fire(trigger)
    assert (machine.state, machine.close_reason) == (State.CLOSED, reason)
    assert machine.closed


def test_illegal_transition_is_a_runtime_error_exported_by_the_package() -> None:
    assert issubclass(IllegalTransition, RuntimeError)
    assert ssesup.IllegalTransition is IllegalTransition
    assert ssesup.State is State and ssesup.Trigger is Trigger and ssesup.CloseReason is CloseReason


def test_transition_is_an_immutable_record() -> None:
    transition = StreamMachine().fire(Trigger.FIRST_SEND)
    assert transition == Transition(State.OPEN, State.STREAMING, Trigger.FIRST_SEND, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        transition.to_state = State.CLOSED  # type: ignore[misc]


def test_machines_are_independent() -> None:
    a, b = StreamMachine(), StreamMachine()
    a.fire(Trigger.FORCE_CLOSE)
    assert (a.state, b.state) == (State.CLOSED, State.OPEN)
    assert b.close_reason is None


# --------------------------------------------------------------------------------------------------
# Every path from OPEN
# --------------------------------------------------------------------------------------------------

MAX_PATH = 6


def test_every_path_from_open_that_reaches_closed_sets_exactly_one_close_reason_that_never_changes() -> None:
    closing_paths = 0
    for path in paths_from_open(MAX_PATH):
        machine = StreamMachine()
        reasons_set: list[CloseReason] = []
        for trigger, to_state, reason in path:
            before = machine.close_reason
            transition = machine.fire(trigger)
            assert (transition.to_state, transition.close_reason) == (to_state, reason)
            if machine.close_reason is not before:
                reasons_set.append(machine.close_reason)  # type: ignore[arg-type]
            if to_state is not State.CLOSED:
                assert machine.close_reason is None
        if machine.closed:
            closing_paths += 1
            # Only the last step closed the stream: CLOSED has no way out, so nothing can follow it.
            assert [step[1] for step in path].index(State.CLOSED) == len(path) - 1
            assert reasons_set == [path[-1][2]]
            for trigger in Trigger:
                with pytest.raises(IllegalTransition):
                    machine.fire(trigger)
                assert machine.close_reason is reasons_set[0]
        else:
            assert reasons_set == []
    assert closing_paths > 0


def test_every_close_reason_is_reachable_by_some_path_from_open() -> None:
    reached = {path[-1][2] for path in paths_from_open(MAX_PATH) if path and path[-1][1] is State.CLOSED}
    assert reached == set(CloseReason)


# --------------------------------------------------------------------------------------------------
# Stateful testing: random triggers, checked against the table
# --------------------------------------------------------------------------------------------------

TABLE_TARGETS = {State.OPEN} | {to_state for to_state, _, _ in TRANSITIONS.values()}


class StreamMachineRandomTriggers(RuleBasedStateMachine):
    """Fires random triggers at one machine and tracks what the table says must happen."""

    def __init__(self) -> None:
        super().__init__()
        self.machine = StreamMachine()
        self.expected_state = State.OPEN
        self.first_close_reason: CloseReason | None = None
        self.history: list[State] = [State.OPEN]

    def _apply(self, trigger: Trigger) -> None:
        before = self.machine.state
        key = (before, trigger)
        if key in TRANSITIONS:
            to_state, reason, ending = TRANSITIONS[key]
            transition = self.machine.fire(trigger)
            assert transition == Transition(before, to_state, trigger, reason, ending)
            self.expected_state = to_state
            if to_state is State.CLOSED:
                assert self.first_close_reason is None, "a second transition into CLOSED"
                self.first_close_reason = reason
        else:
            with pytest.raises(IllegalTransition):
                self.machine.fire(trigger)
        self.history.append(self.machine.state)

    @rule(trigger=st.sampled_from(Trigger))
    def fire_any_trigger(self, trigger: Trigger) -> None:
        self._apply(trigger)

    @precondition(lambda self: not self.machine.closed)
    @rule(data=st.data())
    def fire_a_legal_trigger(self, data: st.DataObject) -> None:
        legal = [trigger for trigger, _, _ in successors(self.machine.state)]
        self._apply(data.draw(st.sampled_from(legal)))

    @invariant()
    def state_follows_the_table(self) -> None:
        assert self.machine.state is self.expected_state
        assert self.machine.state in TABLE_TARGETS

    @invariant()
    def close_reason_is_set_iff_closed(self) -> None:
        assert (self.machine.close_reason is not None) == (self.machine.state is State.CLOSED)
        assert self.machine.closed == (self.machine.state is State.CLOSED)

    @invariant()
    def close_reason_never_changes_once_set(self) -> None:
        assert self.machine.close_reason is self.first_close_reason

    @invariant()
    def nothing_leaves_closed(self) -> None:
        if State.CLOSED in self.history:
            first = self.history.index(State.CLOSED)
            assert set(self.history[first:]) == {State.CLOSED}


TestStreamMachineRandomTriggers = StreamMachineRandomTriggers.TestCase
