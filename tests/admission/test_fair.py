"""The fair queue: bounded, answers first, sources in turn, the longest queue pays."""

from __future__ import annotations

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from mfaproxy.admission.fair import FairQueue


def drain(queue: FairQueue[str]) -> list[str]:
    out = []
    while (item := queue.pop()) is not None:
        out.append(item)
    return out


def test_sources_take_turns_and_keep_their_order() -> None:
    queue: FairQueue[str] = FairQueue(100)
    for i in range(5):
        queue.push("flood", f"f{i}")
    queue.push("nas", "n0")
    queue.push("nas", "n1")
    assert drain(queue) == ["f0", "n0", "f1", "n1", "f2", "f3", "f4"]


def test_answers_to_challenges_go_first() -> None:
    queue: FairQueue[str] = FairQueue(100)
    queue.push("a", "first-1")
    queue.push("b", "first-2")
    queue.push("a", "answer", second_round=True)
    assert drain(queue) == ["answer", "first-1", "first-2"]


def test_when_full_the_longest_source_loses_its_oldest() -> None:
    queue: FairQueue[str] = FairQueue(4)
    for i in range(3):
        assert queue.push("flood", f"f{i}") is None
    assert queue.push("nas", "n0") is None
    assert queue.push("flood", "f3") == "f0"  # the flood pays, freshest copies stay
    assert queue.push("nas", "n1") == "f1"  # still the flood's, not the quiet NAS's
    assert len(queue) == 4
    assert sorted(drain(queue)) == ["f2", "f3", "n0", "n1"]


def test_an_answer_displaces_a_first_round_never_the_reverse() -> None:
    queue: FairQueue[str] = FairQueue(2)
    queue.push("a", "answer-1", second_round=True)
    queue.push("a", "first")
    assert queue.push("b", "answer-2", second_round=True) == "first"
    assert queue.push("c", "late-first") == "late-first"
    assert drain(queue) == ["answer-1", "answer-2"]


ops = st.lists(
    st.tuples(st.sampled_from(["push", "pop"]), st.sampled_from("abcd"), st.booleans()),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 8), ops)
def test_against_a_model(bound: int, operations: list[tuple[str, str, bool]]) -> None:
    """Bounded; nothing lost or duplicated; per-source order kept; answers first; a shed
    item comes from a longest first-round queue when there is one."""
    queue: FairQueue[tuple[str, int, bool]] = FairQueue(bound)
    model: dict[bool, dict[str, deque[tuple[str, int, bool]]]] = {True: {}, False: {}}
    for serial, (op, source, answer) in enumerate(operations):
        if op == "push":
            item = (source, serial, answer)
            longest = max((len(q) for q in model[False].values()), default=0)
            shed = queue.push(source, item, second_round=answer)
            model[answer].setdefault(source, deque()).append(item)
            if shed is not None:
                lane = model[shed[2]][shed[0]]
                assert lane[0] == shed  # the oldest of its source
                if shed is not item and not shed[2]:
                    assert len(lane) - (1 if shed[0] == source and not answer else 0) == longest
                lane.popleft()
        else:
            got = queue.pop()
            waiting_answers = any(model[True].values())
            if got is None:
                assert not waiting_answers and not any(model[False].values())
                continue
            assert got[2] == waiting_answers  # answers first
            assert model[got[2]][got[0]].popleft() == got  # per-source order
        assert len(queue) <= bound
        assert len(queue) == sum(len(q) for lane in model.values() for q in lane.values())
