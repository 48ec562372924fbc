# -*- test-case-name: tests.test_backend_imap -*-
"""
Tests for L{directpush.backends.imap} against a real Dovecot (see
L{tests.dovecot}): the backend contract, with and without SPECIAL-USE
flags on the special folders, and what only IMAP has.
"""

from __future__ import annotations

import atexit
import imaplib
import re
import time
import socket
from typing import Any, Dict, List, Set, Type, TypeVar

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from directpush.auth import CannotCheck
from directpush.backends import imap
from directpush.backends._imapclient import IMAPClient
from directpush.backends.imap import IMAPBackend, IMAPChecker, imapEndpoint
from directpush.interfaces import IMailboxBackend
from directpush.model import Flag, FolderChange, FolderType, NoSuchMessage
from directpush.state.memory import MemoryStateStore

from .backend_contract import ALICE, BOB, START, BackendContractTests
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


class OtherClient:
    """
    Another mail client (blocking imaplib, as a separate program would be).
    """

    def __init__(self, server: Dovecot, user: str = ALICE) -> None:
        self.imap = imaplib.IMAP4("127.0.0.1", server.port)
        self.imap.login(user, PASSWORDS[user])

    def append(self, raw: bytes, folder: str = "INBOX") -> None:
        typ, data = self.imap.append(folder, None, None, raw)
        assert typ == "OK", data

    def flag(self, flag: str, folder: str = "INBOX") -> None:
        self.imap.select(folder)
        typ, data = self.imap.store("1:*", "+FLAGS", flag)
        assert typ == "OK", data

    def close(self) -> None:
        self.imap.logout()


class IMAPWatchTests(SynchronousTestCase):
    """
    What only the IMAP backend has: the IDLE watcher announcing changes
    made by others, and incremental listings.
    """

    skip = SKIP
    specialUse = True

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.backend = IMAPContractMixin.makeBackend(self)  # type: ignore[arg-type]
        self.box = self.resultOf(self.backend.mailbox(ALICE))
        self.inbox = [f.id for f in self.resultOf(self.box.folders()) if f.type == FolderType.INBOX][0]
        self.seen: List[FolderChange] = []
        self.addCleanup(self.backend.notifier.subscribe(ALICE, self.seen.append))

    resultOf = IMAPContractMixin.resultOf

    def other(self) -> OtherClient:
        client = OtherClient(self.dovecot)
        self.addCleanup(client.close)
        return client

    def waitForChange(self) -> Set[str]:
        """
        Run the reactor until a change is announced; the folders it names.
        """
        deadline = time.monotonic() + 30
        from twisted.internet import reactor

        while not self.seen and time.monotonic() < deadline:
            reactor.iterate(0.005)  # type: ignore[attr-defined]
        self.assertTrue(self.seen, "no change announced")
        folders = {f for c in self.seen for f in c.folderIds}
        del self.seen[:]
        return folders

    def watching(self) -> None:
        """
        Watch the Inbox and wait until the IDLE connection is up.
        """
        unwatch = self.backend.watch(ALICE, frozenset({self.inbox}))
        self.addCleanup(unwatch)
        watcher = self.backend._sessions[ALICE].watcher
        assert watcher is not None
        deadline = time.monotonic() + 30
        from twisted.internet import reactor

        while watcher.connections < 1 and time.monotonic() < deadline:
            reactor.iterate(0.005)  # type: ignore[attr-defined]
        self.assertEqual(watcher.connections, 1)

    def test_appendByAnotherClient(self) -> None:
        """
        A message another IMAP client APPENDs is announced for its folder,
        and the next listing has it.
        """
        self.watching()
        self.other().append(b"Subject: hi\r\n\r\nfrom elsewhere\r\n")
        self.assertEqual(self.waitForChange(), {self.inbox})
        [info] = self.resultOf(self.box.messages(self.inbox))
        self.assertEqual(self.resultOf(self.box.message(self.inbox, info.uid)), b"Subject: hi\r\n\r\nfrom elsewhere\r\n")

    def test_flagByAnotherClient(self) -> None:
        """
        A flag another IMAP client sets is announced, and the next listing
        shows it.
        """
        uid = self.resultOf(self.box.append(self.inbox, b"Subject: x\r\n\r\nx\r\n"))
        self.resultOf(self.box.messages(self.inbox))
        self.watching()
        del self.seen[:]
        self.other().flag("\\Flagged")
        self.assertEqual(self.waitForChange(), {self.inbox})
        [info] = self.resultOf(self.box.messages(self.inbox))
        self.assertEqual((info.uid, info.flags), (uid, {Flag.FLAGGED}))

    def test_deliveredByLDA(self) -> None:
        """
        A message Dovecot's LDA delivers is announced.
        """
        self.watching()
        self.dovecot.deliver(ALICE, b"Subject: delivered\r\n\r\nby the LDA\r\n")
        self.assertEqual(self.waitForChange(), {self.inbox})
        [info] = self.resultOf(self.box.messages(self.inbox))
        self.assertIn(b"by the LDA", self.resultOf(self.box.message(self.inbox, info.uid)))

    def test_otherFolderWatched(self) -> None:
        """
        A watched folder other than the Inbox is announced too (NOTIFY).
        """
        folder = self.resultOf(self.box.createFolder(None, "Lists"))
        unwatch = self.backend.watch(ALICE, frozenset({folder.id}))
        self.addCleanup(unwatch)
        self.watching()
        del self.seen[:]
        self.other().append(b"Subject: list\r\n\r\nx\r\n", "Lists")
        self.assertEqual(self.waitForChange(), {folder.id})

    def test_unwatchedNotAnnounced(self) -> None:
        """
        Changes to folders nobody watches are not announced by the
        watcher.
        """
        folder = self.resultOf(self.box.createFolder(None, "Quiet"))
        self.watching()
        self.other().append(b"Subject: q\r\n\r\nx\r\n", "Quiet")
        self.other().append(b"Subject: i\r\n\r\nx\r\n")
        self.assertEqual(self.waitForChange(), {self.inbox})
        self.assertNotIn(folder.id, {f for c in self.seen for f in c.folderIds})

    def test_idleRenewed(self) -> None:
        """
        IDLE is ended and started again before 29 minutes pass on the
        clock, and changes are still announced after.
        """
        self.watching()
        watcher = self.backend._sessions[ALICE].watcher
        assert watcher is not None and watcher.client is not None
        sent: List[bytes] = []
        client = watcher.client
        original = client.sendLine
        client.sendLine = lambda line: (sent.append(line), original(line))[1]  # type: ignore[method-assign]
        self.clock.advance(29 * 60 - 1)
        from twisted.internet import reactor

        deadline = time.monotonic() + 30
        while sum(1 for line in sent if line.endswith(b"IDLE")) < 1 and time.monotonic() < deadline:
            reactor.iterate(0.005)  # type: ignore[attr-defined]
        self.assertEqual(sent[0], b"DONE")
        self.assertTrue(sent[-1].endswith(b" IDLE"))
        self.other().append(b"Subject: later\r\n\r\nx\r\n")
        self.assertEqual(self.waitForChange(), {self.inbox})

    def test_incrementalListing(self) -> None:
        """
        A listing after a flag change fetches only what changed
        (CHANGEDSINCE), and one after no change fetches nothing.
        """
        for n in range(5):
            self.resultOf(self.box.append(self.inbox, b"Subject: %d\r\n\r\nx\r\n" % n))
        self.resultOf(self.box.messages(self.inbox))
        session = self.backend._sessions[ALICE]
        assert session.client is not None
        sent: List[bytes] = []
        client = session.client
        original = client.sendLine
        client.sendLine = lambda line: (sent.append(line), original(line))[1]  # type: ignore[method-assign]
        self.resultOf(self.box.messages(self.inbox))
        self.assertEqual([line for line in sent if b"FETCH" in line], [])
        self.other().flag("\\Seen")
        infos = self.resultOf(self.box.messages(self.inbox))
        self.assertEqual({i.flags for i in infos}, {frozenset({Flag.SEEN})})
        fetches = [line for line in sent if b"FETCH" in line]
        self.assertEqual(len(fetches), 1)
        self.assertIn(b"CHANGEDSINCE", fetches[0])

    def test_uidValidityChange(self) -> None:
        """
        When a folder's UIDVALIDITY changes (recreated by another client),
        every old uid is gone and the messages come back under new uids.
        """
        folder = self.resultOf(self.box.createFolder(None, "Again"))
        old = self.resultOf(self.box.append(folder.id, b"Subject: a\r\n\r\nx\r\n"))
        self.resultOf(self.box.messages(folder.id))
        other = self.other()
        other.imap.delete("Again")
        other.imap.create("Again")
        other.append(b"Subject: a\r\n\r\nx\r\n", "Again")
        # the folder keeps its id: same name
        [info] = self.resultOf(self.box.messages(folder.id))
        self.assertNotEqual(info.uid, old)
        self.failureResultOf(self._fetch(folder.id, old), NoSuchMessage)

    def _fetch(self, folderId: str, uid: str) -> "Deferred[bytes]":
        d = self.box.message(folderId, uid)
        spin(d)
        return d


class EndpointTests(SynchronousTestCase):
    """
    L{imapEndpoint}: implicit TLS, STARTTLS, plain only to loopback.
    """

    def test_forms(self) -> None:
        """
        tls: wraps the connection in verified TLS; tcp: asks for a verified
        STARTTLS; tcp: with plaintext allowed, to loopback, neither.
        """
        from twisted.internet.testing import MemoryReactor

        reactor = MemoryReactor()
        endpoint, startTLS = imapEndpoint(reactor, "tls:mail.example.org:993")
        self.assertIsNone(startTLS)
        self.assertIn("Wrapper", type(endpoint).__name__)
        endpoint, startTLS = imapEndpoint(reactor, "tcp:mail.example.org:143")
        self.assertIsNotNone(startTLS)
        endpoint, startTLS = imapEndpoint(reactor, "tcp:127.0.0.1:143", allowPlaintext=True)
        self.assertIsNone(startTLS)
        self.assertEqual(type(endpoint).__name__, "HostnameEndpoint")
        for bad in ["mail.example.org:993", "ssl:mail:993", "tcp:mail:x", "tls:mail:993:timeout=3"]:
            self.assertRaises(ValueError, imapEndpoint, reactor, bad)
        self.assertRaises(ValueError, imapEndpoint, reactor, "tcp:mail.example.org:143", allowPlaintext=True)


class CheckerAndSessionTests(SynchronousTestCase):
    """
    L{IMAPChecker} and the session's life, against Dovecot.
    """

    skip = SKIP

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.clock = Clock()
        self.dovecot = dovecot(True)
        self.dovecot.reset()
        self.backend = IMAPBackend(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.dovecot.port), MemoryStateStore(), self.clock
        )
        self.addCleanup(lambda: spin(Deferred.fromCoroutine(self.backend.close())))
        self.checker = IMAPChecker(self.backend)

    def check(self, user: str, password: str) -> "Deferred[bytes]":
        d = self.checker.requestAvatarId(UsernamePassword(user.encode(), password.encode()))
        spin(d)
        return d

    def test_checker(self) -> None:
        """
        The right password logs in once; later checks compare in memory
        (no new connection); a wrong one or an unknown user is refused,
        and the refused attempt leaves no connection behind.
        """
        self.assertEqual(self.successResultOf(self.check(ALICE, PASSWORDS[ALICE])), ALICE.encode())
        session = self.backend._sessions[ALICE]
        self.assertEqual(self.successResultOf(self.check(ALICE, PASSWORDS[ALICE])), ALICE.encode())
        self.assertIs(self.backend._sessions[ALICE], session)
        for user, password in [(ALICE, "wrong"), ("nobody@example.org", "x"), ("../etc", "x"), (ALICE, "")]:
            refused = self.failureResultOf(self.check(user, password), UnauthorizedLogin)
            # A plain refusal (401), not "cannot check now" (503).
            self.assertIsNone(refused.check(CannotCheck), (user, password))
        self.assertIs(self.backend._sessions[ALICE], session)
        self.assertEqual(self.backend.credentials(ALICE), (ALICE, PASSWORDS[ALICE]))
        self.clock.advance(0)  # the refused candidates stop
        self.assertEqual(self.backend.connectionCount(), 1)

    def test_serverUnreachable(self) -> None:
        """
        When the IMAP server cannot be reached the password cannot be
        checked: L{CannotCheck} (503 on the web, so phones retry instead
        of asking their users for it), and nothing is remembered.
        """
        from twisted.internet import reactor

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        backend = IMAPBackend(TCP4ClientEndpoint(reactor, "127.0.0.1", closed), MemoryStateStore(), self.clock)
        self.addCleanup(lambda: spin(Deferred.fromCoroutine(backend.close())))
        d = IMAPChecker(backend).requestAvatarId(UsernamePassword(ALICE.encode(), PASSWORDS[ALICE].encode()))
        spin(d)
        self.failureResultOf(d, CannotCheck)
        self.clock.advance(0)
        self.assertIsNone(backend.credentials(ALICE))
        self.flushLoggedErrors()

    def test_idleSessionClosed(self) -> None:
        """
        A session without activity or watches for longer than
        C{sessionIdle} is closed and its password forgotten; a watched one
        stays.
        """
        self.successResultOf(self.check(ALICE, PASSWORDS[ALICE]))
        self.successResultOf(self.check(BOB, PASSWORDS[BOB]))
        box = self.successResultOf(self.backend.mailbox(BOB))
        inbox = next(f.id for f in self._result(box.folders()) if f.type == FolderType.INBOX)
        unwatch = self.backend.watch(BOB, frozenset({inbox}))
        self.addCleanup(unwatch)
        for _ in range(20):
            self.clock.advance(60)
        self.assertNotIn(ALICE, self.backend._sessions)
        self.assertIsNone(self.backend.credentials(ALICE))
        self.failureResultOf(self.backend.mailbox(ALICE), UnauthorizedLogin)
        self.assertIn(BOB, self.backend._sessions)

    def _result(self, d: "Deferred[T]") -> T:
        spin(d)
        return self.successResultOf(d)


class PrepareTimeoutTests(SynchronousTestCase):
    """
    A new connection that never becomes ready is given up, so that
    ClientService tries again.
    """

    def prepare(self, ready: "Deferred[None]") -> "tuple[Deferred[None], StringTransport, Clock]":
        clock = Clock()
        transport = StringTransport()
        proxy = IMAPClient()
        proxy.makeConnection(transport)

        async def prepare(client: IMAPClient) -> None:
            await ready

        return imap._prepareOrClose(proxy, prepare, clock), transport, clock

    def test_silentServer(self) -> None:
        """
        A server that takes the connection and never answers: after
        L{imap.PREPARE_TIMEOUT} the preparation fails and the connection
        is aborted.
        """
        d, transport, clock = self.prepare(Deferred())
        clock.advance(imap.PREPARE_TIMEOUT - 1)
        self.assertNoResult(d)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.failureResultOf(d, defer.TimeoutError)
        self.assertTrue(transport.disconnecting)

    def test_ready(self) -> None:
        """
        A connection ready in time stays, and no timer is left behind.
        """
        ready: "Deferred[None]" = Deferred()
        d, transport, clock = self.prepare(ready)
        ready.callback(None)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertFalse(transport.disconnecting)
