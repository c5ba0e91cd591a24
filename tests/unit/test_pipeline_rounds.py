"""How often the run loop goes round while a ring buffer is busy (loader/pipeline.py ``pump``).

A busy ring's fd stays readable as long as the ring holds anything, so a loop that polled it
each round would spin; while its reader reads on a timer the loop goes round at most every
MIN_ROUND_S, and a reader with no timer is read as soon as its fd wakes the loop."""

from __future__ import annotations

import os
from collections.abc import Sequence

from loader.pipeline import MIN_ROUND_S, Pipeline


class BusyRing:
    """A reader whose fd is always readable, read on a timer (``timed``) or as woken."""

    def __init__(self, *, timed: bool) -> None:
        self.timed = timed
        self._r, self._w = os.pipe2(os.O_CLOEXEC)
        os.write(self._w, b"x")  # never read: readable for good, as a ring that keeps filling
        self.reads: list[float] = []

    def fds(self) -> Sequence[int]:
        return (self._r,)

    def due(self) -> float | None:
        return self.reads[-1] + 0.005 if self.timed and self.reads else None

    def read(self, now: float) -> None:
        self.reads.append(now)

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


def pumped(reader: BusyRing, rounds: int) -> list[float]:
    """When ``reader`` was read in ``rounds`` rounds of a pipeline without processors."""
    pipeline = Pipeline(manifest=None, processors={}, open_sinks=lambda *a: [],
                        workers=lambda route: 1)
    try:
        for _ in range(rounds):
            pipeline.pump([reader], 100)
    finally:
        reader.close()
    return reader.reads


def test_a_busy_ring_on_its_timer_is_read_at_most_every_min_round() -> None:
    reads = pumped(BusyRing(timed=True), 20)
    assert len(reads) == 20  # every round reads it: no read waits for the 5 ms timer
    gaps = [b - a for a, b in zip(reads, reads[1:])]
    assert min(gaps) >= MIN_ROUND_S * 0.99, gaps  # yet the rounds do not spin


def test_a_ring_without_a_timer_is_read_as_soon_as_it_wakes_the_loop() -> None:
    reads = pumped(BusyRing(timed=False), 20)
    assert len(reads) == 20
    gaps = [b - a for a, b in zip(reads, reads[1:])]
    assert min(gaps) < MIN_ROUND_S, gaps  # no pause is imposed between its rounds
