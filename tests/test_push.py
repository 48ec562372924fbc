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
