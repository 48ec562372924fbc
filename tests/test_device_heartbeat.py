"""
The adaptive heartbeat machine, without any network.
"""

from __future__ import annotations

from typing import List, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from directpush.device.heartbeat import Heartbeat, Outcome

MIN = 60


def seed() -> Heartbeat:
    return Heartbeat.create(initial=15 * MIN, minimum=8 * MIN, maximum=30 * MIN, step=4 * MIN)


def simulate(beat: Heartbeat, timeout: int, rounds: int) -> Tuple[List[Tuple[int, str]], int]:
    """
    Ping C{rounds} times through a carrier that drops a connection idle for
    C{timeout} seconds or more; return (interval, outcome) per Ping and the
    number of drops.
    """
    trace = []
    drops = 0
    for _ in range(rounds):
        interval = beat.current
        if interval < timeout:
            outcome = beat.expired()
        else:
            drops += 1
            outcome = beat.dropped()
        trace.append((interval, outcome.value))
    return trace, drops


class SeedExampleTests(SynchronousTestCase):
    def test_workedExample(self) -> None:
        """
        The seed's dance: 15 dropped, 8, 12, a change at 12, 12 clean,
        16 dropped, settled on 12.
        """
        beat = seed()
        self.assertEqual(beat.current, 15 * MIN)
        self.assertEqual(beat.dropped(), Outcome.FELL_BACK)
        self.assertEqual(beat.current, 8 * MIN)
        self.assertEqual(beat.expired(), Outcome.GREW)
        self.assertEqual(beat.current, 12 * MIN)
        self.assertEqual(beat.changed(), Outcome.UNCHANGED)
        self.assertEqual(beat.current, 12 * MIN)
        self.assertEqual(beat.expired(), Outcome.GREW)
        self.assertEqual(beat.current, 16 * MIN)
        self.assertEqual(beat.dropped(), Outcome.SETTLED)
        self.assertEqual(beat.current, 12 * MIN)
        self.assertTrue(beat.settled)
        self.assertEqual(beat.expired(), Outcome.UNCHANGED)
        self.assertEqual(beat.current, 12 * MIN)

    def test_droppedAtSettledRelearns(self) -> None:
        """
        A drop at a settled interval (the network changed) falls back to
        the minimum and learns again.
        """
        beat = seed()
        beat.dropped()
        beat.expired()
        beat.expired()
        beat.dropped()
        self.assertTrue(beat.settled)
        self.assertEqual(beat.dropped(), Outcome.FELL_BACK)
        self.assertEqual(beat.current, 8 * MIN)
        self.assertFalse(beat.settled)

    def test_dropAtMinimum(self) -> None:
        """
        A drop at the minimum leaves it there.
        """
        beat = Heartbeat.create(480, 480, 960, 240)
        self.assertEqual(beat.dropped(), Outcome.UNCHANGED)
        self.assertEqual(beat.current, 480)

    def test_maximumSettles(self) -> None:
        """
        A clean expiry at the maximum settles there.
        """
        beat = Heartbeat.create(900, 480, 1000, 240)
        self.assertEqual(beat.expired(), Outcome.GREW)
        self.assertEqual(beat.current, 1000)
        self.assertEqual(beat.expired(), Outcome.SETTLED)
        self.assertEqual(beat.current, 1000)

    def test_serverBoundBelow(self) -> None:
        """
        Status 5 with a lower bound: adopted as the new maximum.
        """
        beat = seed()
        self.assertEqual(beat.bounded(600), Outcome.BOUNDED)
        self.assertEqual((beat.current, beat.maximum), (600, 600))
        beat.expired()
        self.assertEqual(beat.current, 600)
        self.assertTrue(beat.settled)

    def test_serverBoundAbove(self) -> None:
        """
        Status 5 with a higher bound: adopted as the new minimum.
        """
        beat = Heartbeat.create(60, 30, 1800, 240)
        beat.bounded(120)
        self.assertEqual((beat.current, beat.minimum), (120, 120))

    def test_badSettings(self) -> None:
        """
        An empty range or a step that is not positive is refused; the
        initial interval is clamped into the range.
        """
        self.assertRaises(ValueError, Heartbeat.create, 100, 200, 100, 10)
        self.assertRaises(ValueError, Heartbeat.create, 100, 10, 200, 0)
        self.assertEqual(Heartbeat.create(5000, 10, 200, 10).current, 200)


settingsStrategy = st.tuples(
    st.integers(min_value=60, max_value=1200),  # minimum
    st.integers(min_value=0, max_value=3000),  # maximum above minimum
    st.integers(min_value=1, max_value=600),  # step
    st.integers(min_value=0, max_value=100),  # initial, as a percentage
)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(settingsStrategy, st.data())
    def test_settlesOnLargestReachable(self, s, data) -> None:
        """
        For any carrier timeout T above the minimum, the device settles on
        the largest interval its grid reaches that is below T, after at
        most two drops, and then stays there.
        """
        minimum, extra, step, percent = s
        maximum = minimum + extra
        initial = minimum + extra * percent // 100
        timeout = data.draw(st.integers(min_value=minimum + 1, max_value=maximum + 1))
        beat = Heartbeat.create(initial, minimum, maximum, step)
        rounds = 3 + (maximum - minimum) // step + 5
        trace, drops = simulate(beat, timeout, rounds)
        self.assertTrue(beat.settled, trace)
        self.assertLessEqual(drops, 2, trace)
        settledAt = beat.current
        self.assertLess(settledAt, timeout)
        self.assertTrue(minimum <= settledAt <= maximum)
        # The grid the device walked: from the initial interval if it
        # worked, else from the minimum.
        start = initial if initial < timeout else minimum
        grid = sorted({min(start + k * step, maximum) for k in range((maximum - start) // step + 2)})
        self.assertEqual(settledAt, max(v for v in grid if v < timeout), trace)
        # Stable: no more drops, no more changes.
        after, moreDrops = simulate(beat, timeout, 20)
        self.assertEqual(moreDrops, 0)
        self.assertEqual({interval for interval, _ in after}, {settledAt})

    @settings(max_examples=300, deadline=None)
    @given(settingsStrategy, st.lists(st.sampled_from(["expired", "changed", "dropped", "bounded"]), max_size=40), st.data())
    def test_alwaysInRange(self, s, events, data) -> None:
        """
        Whatever happens, the interval stays inside [minimum, maximum]
        (which only a server bound may move).
        """
        minimum, extra, step, percent = s
        maximum = minimum + extra
        beat = Heartbeat.create(minimum + extra * percent // 100, minimum, maximum, step)
        for event in events:
            if event == "bounded":
                beat.bounded(data.draw(st.integers(min_value=1, max_value=4000)))
            else:
                getattr(beat, event)()
            self.assertTrue(beat.minimum <= beat.current <= beat.maximum, (event, beat))
