# -*- test-case-name: tests.test_backend_memory -*-
"""
Tests for L{directpush.backends.memory}: the reference backend keeps the
backend contract.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from directpush.backends.memory import MemoryBackend
from directpush.interfaces import IMailboxBackend
from directpush.notify import LocalNotifier

from .backend_contract import BackendContractTests


class MemoryBackendTests(BackendContractTests, SynchronousTestCase):
    """
    L{MemoryBackend} keeps the L{IMailboxBackend} contract.
    """

    def makeBackend(self) -> IMailboxBackend:
        return MemoryBackend(self.clock)

    def test_givenNotifier(self) -> None:
        """
        A notifier passed in is the one changes are announced through.
        """
        notifier = LocalNotifier()
        self.assertIs(MemoryBackend(self.clock, notifier).notifier, notifier)
