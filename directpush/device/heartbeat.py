# -*- test-case-name: tests.test_device_heartbeat -*-
"""
The adaptive heartbeat of the seed's "heartbeat dance": a device learns the
longest Ping heartbeat its network path allows.

A pure state machine: it never touches the network or a clock. The device
tells it how each Ping ended and asks it for the next heartbeat.

The rules (all intervals in seconds, always inside [minimum, maximum]):

  - B{Clean expiry} (Ping Status 1): the current interval is known to work.
    Unless settled, grow by C{step} (capped at C{maximum}); that new
    interval is "an increase".
  - B{Change} (Ping Status 2, or any other answer): no effect on the
    interval; the device Pings again with the same one.
  - B{Silent drop} right after an increase (no clean expiry yet at the
    increased interval): the limit is reached; settle on the last interval
    that worked and stop growing.
  - B{Silent drop} otherwise (the first Ping, or a settled interval that
    stopped working because the network changed): fall back to C{minimum}
    and learn again from there.
  - B{Server bound} (Ping Status 5 with HeartbeatInterval): adopt the
    server's bound as the current interval and narrow [minimum, maximum]
    to it.

With the seed's settings (initial 15 min, minimum 8, maximum 30, step 4)
and a carrier that drops idle connections after 13 min this yields
15 (dropped) -> 8 -> 12 -> 12 -> 16 (dropped) -> settled on 12.
"""

from __future__ import annotations

import enum
from typing import Optional

import attrs

__all__ = ["Heartbeat", "Outcome"]


class Outcome(enum.Enum):
    """
    What one event did to the heartbeat.
    """

    #: The interval stays as it was.
    UNCHANGED = "unchanged"
    #: The interval grew by a step (or to the maximum).
    GREW = "grew"
    #: After a drop not right after an increase: back to the minimum.
    FELL_BACK = "fell-back"
    #: The limit is found: the interval is now fixed.
    SETTLED = "settled"
    #: The server's bound was adopted.
    BOUNDED = "bounded"




@attrs.define
class Heartbeat:
    """
    The adaptive heartbeat.

    @ivar minimum: the shortest interval ever used.
    @ivar maximum: the longest interval ever used.
    @ivar step: how much one clean expiry adds.
    @ivar current: the interval for the next Ping.
    @ivar lastGood: the longest interval that ended in a clean expiry since
        the last fall-back, or L{None}.
    @ivar increased: whether C{current} is an increase not yet confirmed by
        a clean expiry.
    @ivar settled: whether the limit is found and growth has stopped.
    """

    minimum: int
    maximum: int
    step: int
    current: int
    lastGood: Optional[int] = None
    increased: bool = False
    settled: bool = False

    @classmethod
    def create(cls, initial: int, minimum: int, maximum: int, step: int) -> "Heartbeat":
        """
        A heartbeat that starts at C{initial} (clamped into the range).

        @raise ValueError: for an empty range or a step that is not positive.
        """
        if minimum < 1 or minimum > maximum:
            raise ValueError("the minimum heartbeat must be positive and not above the maximum")
        if step < 1:
            raise ValueError("the heartbeat step must be positive")
        return cls(minimum=minimum, maximum=maximum, step=step, current=_clamp(initial, minimum, maximum))

    def expired(self) -> Outcome:
        """
        The Ping ended with a clean expiry (Status 1): the current interval
        works.
        """
        self.lastGood = self.current
        self.increased = False
        if self.settled:
            return Outcome.UNCHANGED
        grown = min(self.current + self.step, self.maximum)
        if grown == self.current:
            # Already at the maximum: nothing longer to try.
            self.settled = True
            return Outcome.SETTLED
        self.current = grown
        self.increased = True
        return Outcome.GREW

    def changed(self) -> Outcome:
        """
        The Ping was answered before its end (Status 2 and the like): the
        interval is neither confirmed nor refuted.
        """
        return Outcome.UNCHANGED

    def dropped(self) -> Outcome:
        """
        The Ping had no answer by its end: the network cut it silently.
        """
        if self.increased and self.lastGood is not None:
            self.current = self.lastGood
            self.increased = False
            self.settled = True
            return Outcome.SETTLED
        self.settled = False
        self.increased = False
        self.lastGood = None
        if self.current == self.minimum:
            return Outcome.UNCHANGED
        self.current = self.minimum
        return Outcome.FELL_BACK

    def bounded(self, bound: int) -> Outcome:
        """
        The server refused the interval (Status 5) and named its bound:
        adopt it, and never go beyond it again.
        """
        if bound < 1:
            return Outcome.UNCHANGED
        if bound < self.current:
            self.maximum = bound
            self.minimum = min(self.minimum, bound)
        else:
            self.minimum = bound
            self.maximum = max(self.maximum, bound)
        self.current = bound
        self.increased = False
        if self.lastGood is not None:
            self.lastGood = _clamp(self.lastGood, self.minimum, self.maximum)
        return Outcome.BOUNDED


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))
