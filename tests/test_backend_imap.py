# -*- test-case-name: tests.test_backend_imap -*-
"""
Tests for L{directpush.backends.imap} against a real Dovecot (see
L{tests.dovecot}): the backend contract, with and without SPECIAL-USE
flags on the special folders, and what only IMAP has.
"""

from __future__ import annotations

import atexit
import re
import time
from typing import Any, Dict, Optional, Type, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from directpush.backends.imap import IMAPBackend
from directpush.interfaces import IMailboxBackend
from directpush.state.memory import MemoryStateStore

from .backend_contract import ALICE, BOB, BackendContractTests
from .dovecot import SKIP, Dovecot

T = TypeVar("T")

PASSWORDS = {ALICE: "alice-secret", BOB: "bob secret \u00e9"}

_servers: Dict[bool, Dovecot] = {}


def dovecot(specialUse: bool = True) -> Dovecot:
    """
    The shared Dovecot of this test run (one per SPECIAL-USE setting),
    started on first use and stopped when the process exits.
    """
    server = _servers.get(specialUse)
    if server is None:
        server = Dovecot(specialUse=specialUse)
        for user, password in PASSWORDS.items():
            server.addUser(user, password)
        server.start()
        atexit.register(server.cleanup)
        _servers[specialUse] = server
    return server


def spin(d: "Deferred[T]", seconds: float = 30.0) -> None:
    """
    Run the global reactor (tests only) until C{d} has a result.
    """
    from twisted.internet import reactor

    deadline = time.monotonic() + seconds
    while not d.called and time.monotonic() < deadline:
        reactor.iterate(0.005)  # type: ignore[attr-defined]


def canonical(raw: bytes) -> bytes:
    """
    What IMAP gives back for C{raw}: bare LF become CRLF; an empty message
    is one empty line.
    """
    return re.sub(rb"(?<!\r)\n", b"\r\n", raw) or b"\r\n"


class IMAPContractMixin(BackendContractTests):
    specialUse = True
    timeResolution = 1.0

    def stored(self, raw: bytes) -> bytes:
        return canonical(raw)

    def makeBackend(self) -> IMailboxBackend:
        from twisted.internet import reactor

        self.dovecot = dovecot(self.specialUse)
        self.dovecot.reset()
        # Not imapEndpoint's HostnameEndpoint: its name resolution needs
        # the reactor's thread pool, which only a running reactor has.
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.dovecot.port)
        # the contract advances the clock by minutes between calls
        backend = IMAPBackend(endpoint, MemoryStateStore(), self.clock, sessionIdle=24 * 3600)

        def close() -> None:
            spin(Deferred.fromCoroutine(backend.close()))

        self.addCleanup(close)
        for user, password in PASSWORDS.items():
            d = Deferred.fromCoroutine(backend.login(user, password))
            spin(d)
            self.assertTrue(self.successResultOf(d))
        return backend

    def flush(self) -> None:
        from twisted.internet import reactor

        for _ in range(5):
            reactor.iterate(0)  # type: ignore[attr-defined]

    def resultOf(self, d: "Deferred[T]") -> T:
        spin(d)
        return self.successResultOf(d)

    def failureOf(self, d: "Deferred[Any]", *errors: Type[BaseException]) -> Failure:
        spin(d)
        return self.failureResultOf(d, *errors)


class IMAPContractTests(IMAPContractMixin, SynchronousTestCase):
    """
    L{IMAPBackend} keeps the L{IMailboxBackend} contract on a Dovecot whose
    special folders carry SPECIAL-USE flags (with names the backend would
    not guess: "Deleted Messages" is the Trash).
    """

    skip = SKIP


class IMAPNoSpecialUseContractTests(IMAPContractMixin, SynchronousTestCase):
    """
    L{IMAPBackend} keeps the L{IMailboxBackend} contract on a Dovecot
    without SPECIAL-USE flags: special folders are found by name, and
    created when missing.
    """

    skip = SKIP
    specialUse = False
