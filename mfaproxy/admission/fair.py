"""A bounded queue that is fair between sources, with a lane for answers to challenges.

Two lanes: answers to an Access-Challenge (nearly finished logins) are always served
before new first rounds. Within a lane the sources take turns, one item each (round
robin over the sources that have something waiting), and each source's items keep
their order. When the queue is full the oldest item of the longest first-round queue is
shed (the source sending most pays, and the freshest copies stay, as fq_codel drops
from the head), or the newcomer when only answers are waiting. Every operation is O(1).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Generic, TypeVar

T = TypeVar("T")


class _Lane(Generic[T]):
    def __init__(self) -> None:
        # Sources in turn order; each with its items, oldest first.
        self._turns: OrderedDict[str, deque[T]] = OrderedDict()
        # Sources by queue length, to find a longest one in O(1).
        self._by_length: dict[int, dict[str, None]] = {}
        self._longest = 0
        self.size = 0

    def _move(self, source: str, old: int, new: int) -> None:
        if old:
            bucket = self._by_length[old]
            del bucket[source]
            if not bucket:
                del self._by_length[old]
        if new:
            self._by_length.setdefault(new, {})[source] = None
        self._longest = max(self._longest, new)
        while self._longest and self._longest not in self._by_length:
            self._longest -= 1

    def push(self, source: str, item: T) -> None:
        items = self._turns.get(source)
        if items is None:
            items = self._turns[source] = deque()
        items.append(item)
        self._move(source, len(items) - 1, len(items))
        self.size += 1

    def _take(self, source: str) -> T:
        items = self._turns[source]
        item = items.popleft()
        self._move(source, len(items) + 1, len(items))
        self.size -= 1
        if not items:
            del self._turns[source]
        return item

    def pop(self) -> T:
        """The next item in turn: the first source's oldest; that source goes last."""
        source = next(iter(self._turns))
        item = self._take(source)
        if source in self._turns:
            self._turns.move_to_end(source)
        return item

    def shed_longest(self) -> T:
        """The oldest item of a source with the most items waiting."""
        source = next(iter(self._by_length[self._longest]))
        return self._take(source)

    def longest(self) -> int:
        return self._longest


class FairQueue(Generic[T]):
    def __init__(self, bound: int):
        if bound < 1:
            raise ValueError("bound must be at least 1")
        self.bound = bound
        self._answers: _Lane[T] = _Lane()
        self._first: _Lane[T] = _Lane()

    def __len__(self) -> int:
        return self._answers.size + self._first.size

    def push(self, source: str, item: T, *, second_round: bool = False) -> T | None:
        """Queue `item`; returns the item shed to make room (maybe `item`), or None."""
        lane = self._answers if second_round else self._first
        if len(self) < self.bound:
            lane.push(source, item)
            return None
        if self._first.size:
            shed = self._first.shed_longest()
        elif second_round:
            shed = self._answers.shed_longest()
        else:
            return item  # only answers wait: a new first round does not displace one
        lane.push(source, item)
        return shed

    def pop(self) -> T | None:
        if self._answers.size:
            return self._answers.pop()
        if self._first.size:
            return self._first.pop()
        return None
