# -*- test-case-name: tests.test_push -*-
"""
Tests for L{directpush.push.PushHub} on its own.
"""

from __future__ import annotations

from typing import FrozenSet, List

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from directpush.backends.memory import MemoryBackend
from directpush.model import FolderChange
from directpush.push import PushHub


class PushHubTests(SynchronousTestCase):
    """
    Waits, supersession, verification.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.backend = MemoryBackend(self.clock)
        self.hub = PushHub(self.clock, self.backend)
        self.verified: List[FrozenSet[str]] = []

    async def verify(self, folders: FrozenSet[str]) -> FrozenSet[str]:
        self.verified.append(folders)
        return frozenset(f for f in folders if f != "quiet")

    def test_supersedeSameDevice(self) -> None:
        """
        A second wait of the same device answers the first with None; a
        wait of another device does not.
        """
        first = self.hub.wait("u", "d", frozenset({"1"}), 60, self.verify)
        other = self.hub.wait("u", "e", frozenset({"1"}), 60, self.verify)
        second = self.hub.wait("u", "d", frozenset({"1"}), 60, self.verify)
        self.assertIsNone(self.successResultOf(first))
        self.assertNoResult(other)
        self.assertNoResult(second)
        self.assertEqual(self.hub.waiting, 2)

    def test_verify(self) -> None:
        """
        Events for other users or folders are ignored; events are verified
        and only a confirmed change answers.
        """
        d = self.hub.wait("u", "d", frozenset({"1", "quiet"}), 60, self.verify)
        self.backend.notifier.announce(FolderChange("v", frozenset({"1"})))
        self.backend.notifier.announce(FolderChange("u", frozenset({"2"})))
        self.assertEqual(self.verified, [])
        self.backend.notifier.announce(FolderChange("u", frozenset({"quiet", "2"})))
        self.assertEqual(self.verified, [frozenset({"quiet"})])
        self.assertNoResult(d)
        self.backend.notifier.announce(FolderChange("u", frozenset({"1"})))
        self.assertEqual(self.successResultOf(d), frozenset({"1"}))

    def test_eventsDuringCheck(self) -> None:
        """
        Events arriving while a check runs are checked after it, together.
        """
        pending: List[Deferred] = []

        async def slow(folders: FrozenSet[str]) -> FrozenSet[str]:
            d: Deferred[FrozenSet[str]] = Deferred()
            pending.append(d)
            self.verified.append(folders)
            return await d

        d = self.hub.wait("u", "d", frozenset({"1", "2", "3"}), 60, slow)
        self.backend.notifier.announce(FolderChange("u", frozenset({"1"})))
        self.backend.notifier.announce(FolderChange("u", frozenset({"2"})))
        self.backend.notifier.announce(FolderChange("u", frozenset({"3"})))
        self.assertEqual(len(pending), 1)
        pending[0].callback(frozenset())
        self.assertEqual(self.verified, [frozenset({"1"}), frozenset({"2", "3"})])
        pending[1].callback(frozenset({"3"}))
        self.assertEqual(self.successResultOf(d), frozenset({"3"}))

    def test_failedCheckAnswers(self) -> None:
        """
        A check that fails answers with the folders it was checking (a
        needless Sync beats a missed message), and is logged.
        """

        async def broken(folders: FrozenSet[str]) -> FrozenSet[str]:
            raise RuntimeError("state store down")

        d = self.hub.wait("u", "d", frozenset({"1"}), 60, broken)
        self.backend.notifier.announce(FolderChange("u", frozenset({"1"})))
        self.assertEqual(self.successResultOf(d), frozenset({"1"}))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class DeadlineTests(SynchronousTestCase):
    """
    Heartbeats end through one hub timer set for the earliest deadline.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.hub = PushHub(self.clock, MemoryBackend(self.clock))

    async def verify(self, folders: FrozenSet[str]) -> FrozenSet[str]:
        return folders

    def test_expiryOrderOneTimer(self) -> None:
        """
        Waits with different timeouts end each at its own time, in order,
        with a single timer pending however many wait.
        """
        ended: List[str] = []
        for device, timeout in (("c", 30), ("a", 10), ("b", 20), ("a2", 10)):
            self.hub.wait("alice", device, frozenset({"1"}), timeout, self.verify).addCallback(
                lambda result, device=device: ended.append(device) if result == frozenset() else None
            )
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(9.9)
        self.assertEqual(ended, [])
        self.clock.advance(0.1)
        self.assertEqual(sorted(ended), ["a", "a2"])
        self.clock.advance(10)
        self.assertEqual(ended[2:], ["b"])
        self.clock.advance(10)
        self.assertEqual(ended[3:], ["c"])
        self.assertEqual((self.hub.waiting, self.clock.getDelayedCalls()), (0, []))

    def test_earlierDeadlineMovesTimer(self) -> None:
        """
        A wait shorter than every pending one brings the timer forward.
        """
        long = self.hub.wait("alice", "long", frozenset({"1"}), 100, self.verify)
        short = self.hub.wait("bob", "short", frozenset({"1"}), 5, self.verify)
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [5])
        results: List[object] = []
        short.addCallback(results.append)
        long.addCallback(results.append)
        self.clock.advance(5)
        self.assertEqual(results, [frozenset()])
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [100])

    def test_answeredEarlyLeavesNoTimer(self) -> None:
        """
        Once nothing waits (answered, superseded, cancelled), no timer is
        left pending, and the heap is empty.
        """
        first = self.hub.wait("alice", "dev", frozenset({"1"}), 60, self.verify)
        second = self.hub.wait("alice", "dev", frozenset({"1"}), 60, self.verify)
        self.assertIsNone(self.successResultOf(first))
        second.cancel()
        self.failureResultOf(second)
        self.assertEqual((self.hub.waiting, self.clock.getDelayedCalls()), (0, []))
        self.assertEqual(self.hub._deadlines, [])

    def test_staleEntriesCompacted(self) -> None:
        """
        Requests answered long before their deadline do not pile up in the
        heap while others keep waiting.
        """
        self.hub.wait("keeper", "dev", frozenset({"1"}), 3000, self.verify)
        for i in range(1000):
            self.hub.wait("alice", "dev", frozenset({"1"}), 3000, self.verify)
        self.assertEqual(self.hub.waiting, 2)
        self.assertLess(len(self.hub._deadlines), 200)
        self.clock.advance(3000)
        self.assertEqual((self.hub.waiting, self.clock.getDelayedCalls()), (0, []))

    def test_waitAgainWhileExpiring(self) -> None:
        """
        A request that waits again from the callback of its expiry gets a
        fresh deadline, and the timer follows it.
        """
        again: List[object] = []

        def expired(result: object) -> None:
            again.append(self.hub.wait("alice", "dev", frozenset({"1"}), 60, self.verify))

        self.hub.wait("alice", "dev", frozenset({"1"}), 60, self.verify).addCallback(expired)
        self.clock.advance(60)
        self.assertEqual(len(again), 1)
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [120])
        self.clock.advance(60)
        self.assertEqual(self.successResultOf(again[0]), frozenset())
