# -*- test-case-name: tests.test_submit -*-
"""
Tests for L{directpush.submit}.

Remote delivery runs Twisted's own ESMTP server in memory: the client
endpoint is a L{TCP4ClientEndpoint} on a L{MemoryReactorClock}, whose
connection L{ConnectionCompleter} completes (or refuses) over L{iosim}
fake transports. STARTTLS is iosim's simulated handshake (both sides get
objects with C{iosimVerify}); real certificate verification of
L{optionsForClientTLS} is not exercised here.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.mail.interfaces import IMessageSMTP
from twisted.mail.smtp import (
    ESMTP,
    IMessageDelivery,
    LOGINCredentials,
    SMTPBadRcpt,
    SMTPServerError,
    User,
)
from twisted.python.failure import Failure
from twisted.internet.address import IPv4Address
from twisted.test import iosim
from twisted.test.iosim import ConnectionCompleter, FakeTransport, IOPump
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from directpush.backends.memory import MemoryBackend
from directpush.interfaces import ISubmission
from directpush.model import FolderType
from directpush.submit import (
    Submission,
    SubmissionError,
    TLSMode,
    endpointFromString,
    isLoopback,
    smtpData,
    withReturnPath,
)

from .util import assertProvides

PORT = 2525

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: someone@remote.example\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"Hi.\r\n"
    b".a line starting with a dot\r\n"
    b".\r\n"
    b"Bye.\r\n"
)


class FakeDirectory:
    """
    An L{IDirectory} with a fixed address -> user table.
    """

    def __init__(self, users: Dict[str, str]) -> None:
        self.users = {k.lower(): v for k, v in users.items()}

    def lookup(self, query: str, limit: int) -> "Deferred[List[Dict[str, str]]]":
        return succeed([])

    def localUser(self, address: str) -> "Deferred[Optional[str]]":
        return succeed(self.users.get(address.lower()))


@implementer(IMessageSMTP)
class CollectedMessage:
    """
    One recipient's copy of a message, as the SMTP server hands it over.
    """

    def __init__(self, server: "FakeSmarthost", recipient: str) -> None:
        self.server = server
        self.recipient = recipient
        self.lines: List[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> "Deferred[bytes]":
        self.server.delivered.append(
            (self.recipient, b"".join(line + b"\r\n" for line in self.lines))
        )
        return succeed(b"queued")

    def connectionLost(self) -> None:
        pass


@implementer(IMessageDelivery, IRealm)
class FakeSmarthost:
    """
    What an ESMTP server in memory was asked to do: its EHLO name, MAIL
    FROM, RCPT TO, and the bytes of each delivered copy. Also the realm
    for its AUTH.

    @ivar refuse: recipient -> the code its RCPT TO gets.
    @ivar refuseData: a code for the end of DATA, or L{None} to accept.
    """

    def __init__(self) -> None:
        self.helo: List[bytes] = []
        self.mailFrom: List[str] = []
        self.rcptTo: List[str] = []
        self.delivered: List[Tuple[str, bytes]] = []
        self.refuse: Dict[str, int] = {}
        self.refuseData: Optional[int] = None
        self.authenticated: List[bytes] = []

    def receivedHeader(self, helo: Tuple[bytes, bytes], origin: Any, recipients: Any) -> None:
        self.helo.append(helo[0])
        return None

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        self.mailFrom.append(str(origin))
        return origin

    def validateTo(self, user: User) -> Callable[[], CollectedMessage]:
        address = str(user.dest)
        if address in self.refuse:
            raise SMTPBadRcpt(user.dest, self.refuse[address])
        self.rcptTo.append(address)
        return lambda: self.makeMessage(address)

    def makeMessage(self, address: str) -> Any:
        message = CollectedMessage(self, address)
        if self.refuseData is not None:
            code = self.refuseData

            def lineReceived(line: bytes) -> None:
                # The server answers the final "." with this error's code.
                raise SMTPServerError(code, b"not today")

            message.lineReceived = lineReceived  # type: ignore[method-assign]
        return message

    def requestAvatar(self, avatarId: bytes, mind: Any, *interfaces: Any) -> Any:
        self.authenticated.append(avatarId)
        return IMessageDelivery, self, lambda: None


class FakeTLS:
    """
    Stands in for TLS options on both sides of an iosim connection.
    """

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok

    def iosimVerify(self, other: "FakeTLS") -> bool:
        return self.ok and other.ok


class SMTPServerFactory(Factory):
    """
    Builds Twisted's ESMTP server around a L{FakeSmarthost}, optionally
    offering STARTTLS and AUTH LOGIN.
    """

    def __init__(
        self, smarthost: FakeSmarthost, clock: Clock, tls: Any = None, auth: bool = False
    ) -> None:
        self.smarthost = smarthost
        self.clock = clock
        self.tls = tls
        self.auth = auth

    def buildProtocol(self, addr: Any) -> ESMTP:
        chal = {b"LOGIN": LOGINCredentials} if self.auth else {}
        p = ESMTP(chal=chal, contextFactory=self.tls)
        p.host = b"smarthost.test"
        p.callLater = self.clock.callLater  # its idle timeout, off the global reactor
        if self.auth:
            checker = InMemoryUsernamePasswordDatabaseDontUse(relay=b"s3cret")
            p.portal = Portal(self.smarthost, [checker])
        else:
            p.delivery = self.smarthost
        p.factory = self
        return p


class SubmissionTestsMixin:
    """
    Builds a L{Submission} over a memory backend and a memory smarthost.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.backend = MemoryBackend(self.reactor)
        self.directory = FakeDirectory(
            {
                "alice@example.org": "alice",
                "bob@example.org": "bob",
                "robert@example.org": "bob",
            }
        )
        self.smarthost = FakeSmarthost()
        self.completer = ConnectionCompleter(self.reactor)

    def listen(self, tls: Any = None, auth: bool = False) -> None:
        self.serverFactory: Factory = SMTPServerFactory(self.smarthost, self.reactor, tls, auth)

    def submission(
        self,
        smarthost: bool = True,
        credentials: Optional[Tuple[str, str]] = None,
        requireTLS: bool = False,
        tlsMode: TLSMode = TLSMode(required=False),
    ) -> Submission:
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", PORT) if smarthost else None
        return Submission(
            self.directory,
            self.backend,
            endpoint,
            self.reactor,
            "eas.example.org",
            (lambda: credentials) if credentials else None,
            requireTLS=requireTLS,
            tlsMode=tlsMode,
        )

    def inbox(self, user: str) -> List[bytes]:
        case: SynchronousTestCase = self  # type: ignore[assignment]
        mailbox = case.successResultOf(self.backend.mailbox(user))
        folders = case.successResultOf(mailbox.folders())
        (inbox,) = [f for f in folders if f.type == FolderType.INBOX]
        infos = case.successResultOf(mailbox.messages(inbox.id))
        return [case.successResultOf(mailbox.message(inbox.id, i.uid)) for i in infos]

    def connect(self, greet: bool = True) -> IOPump:
        """
        Complete the pending connection attempt to C{self.serverFactory}
        (L{ConnectionCompleter.succeedOnce} gives addresses without a
        C{host}, which the ESMTP server needs) and, if C{greet}, run the
        session to its end.
        """
        _, port, clientFactory, _, _ = self.reactor.tcpClients.pop(0)
        self.reactor.connectors.pop(0)
        self.assertEqual(port, PORT)  # type: ignore[attr-defined]
        clientAddress = IPv4Address("TCP", "127.0.0.1", 40000)
        serverAddress = IPv4Address("TCP", "127.0.0.1", PORT)
        server = self.serverFactory.buildProtocol(clientAddress)
        client = clientFactory.buildProtocol(serverAddress)
        return iosim.connect(
            server,
            FakeTransport(server, True, serverAddress, clientAddress),
            client,
            FakeTransport(client, False, clientAddress, serverAddress),
            greet=greet,
            clock=self.reactor,
        )

    def submissionError(self, d: "Deferred[None]") -> SubmissionError:
        case: SynchronousTestCase = self  # type: ignore[assignment]
        return case.failureResultOf(d, SubmissionError).value  # type: ignore[return-value]


class LocalDeliveryTests(SubmissionTestsMixin, SynchronousTestCase):
    """
    Local recipients get the message in their Inbox.
    """

    def test_provides(self) -> None:
        """
        A L{Submission} fully provides L{ISubmission}.
        """
        assertProvides(self, ISubmission, self.submission())

    def test_inbox(self) -> None:
        """
        A local recipient's Inbox receives the raw message unchanged but
        for a C{Return-Path:} line on top; no SMTP connection is made.
        """
        d = self.submission().submit("alice", "alice@example.org", ["bob@example.org"], MESSAGE)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.inbox("bob"), [b"Return-Path: <alice@example.org>\r\n" + MESSAGE])
        self.assertEqual(self.reactor.tcpClients, [])

    def test_retryNotRepeated(self) -> None:
        """
        A retry of a send cut short by a crash (C{retrySince}) does not
        deliver again to a local recipient who already has the message
        (same Message-ID, arrived since then), but does deliver to one who
        does not, and a copy older than the first attempt does not count.
        """
        withId = b"Message-ID: <once@example.org>\r\n" + MESSAGE
        self.reactor.advance(100)
        self.successResultOf(self.submission().submit("alice", "alice@example.org", ["bob@example.org"], withId))
        self.reactor.advance(100)
        began = self.reactor.seconds() - 1
        self.successResultOf(
            self.submission().submit("alice", "alice@example.org", ["bob@example.org"], withId, retrySince=began - 500)
        )
        self.assertEqual(len(self.inbox("bob")), 1)
        self.successResultOf(
            self.submission().submit("alice", "alice@example.org", ["alice@example.org", "bob@example.org"], withId, retrySince=began)
        )
        self.assertEqual(len(self.inbox("alice")), 1)
        self.assertEqual(len(self.inbox("bob")), 2)

    def test_onceEach(self) -> None:
        """
        A user listed twice, under two spellings or two addresses, gets one
        copy; every local user listed gets theirs.
        """
        d = self.submission(smarthost=False).submit(
            "alice",
            "alice@example.org",
            ["bob@example.org", "BOB@example.org", "robert@example.org", "alice@example.org"],
            MESSAGE,
        )
        self.successResultOf(d)
        self.assertEqual(len(self.inbox("bob")), 1)
        self.assertEqual(len(self.inbox("alice")), 1)

    def test_returnPathLineEnd(self) -> None:
        """
        C{Return-Path:} ends its line as the message does, and the null
        sender becomes C{<>}.
        """
        self.assertEqual(withReturnPath("a@b", b"X: y\n\nbody\n"), b"Return-Path: <a@b>\nX: y\n\nbody\n")
        self.assertEqual(withReturnPath("", b"X: y\r\n"), b"Return-Path: <>\r\nX: y\r\n")

    def test_noSmarthost(self) -> None:
        """
        A remote recipient without a smarthost is a permanent failure, and
        nothing is delivered, not even to the local recipients.
        """
        d = self.submission(smarthost=False).submit(
            "alice", "alice@example.org", ["bob@example.org", "x@remote.example"], MESSAGE
        )
        error = self.submissionError(d)
        self.assertTrue(error.permanent)
        self.assertEqual(error.message, "no smarthost configured")
        self.assertEqual(self.inbox("bob"), [])

    def test_invalidAddresses(self) -> None:
        """
        Addresses that could smuggle SMTP commands or header lines, and an
        empty recipient list, are refused as permanent failures.
        """
        s = self.submission()
        for sender, recipients in [
            ("alice@example.org\r\nRCPT TO:<x@y>", ["bob@example.org"]),
            ("alice@example.org", ["bob@example.org>\r\nDATA"]),
            ("alice@example.org", ["b ob@example.org"]),
            ("alice@example.org", []),
        ]:
            self.assertTrue(self.submissionError(s.submit("alice", sender, recipients, MESSAGE)).permanent)
        self.assertEqual(self.inbox("bob"), [])
        self.assertEqual(self.reactor.tcpClients, [])

    def test_backendFailure(self) -> None:
        """
        A mailbox that cannot store the message is a temporary failure.
        """

        def broken(user: str) -> "Deferred[Any]":
            raise OSError("disk full")

        self.backend.mailbox = broken  # type: ignore[method-assign]
        error = self.submissionError(
            self.submission().submit("alice", "alice@example.org", ["bob@example.org"], MESSAGE)
        )
        self.assertFalse(error.permanent)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class RemoteDeliveryTests(SubmissionTestsMixin, SynchronousTestCase):
    """
    Remote recipients get the message through one SMTP transaction with the
    smarthost.
    """

    def test_relay(self) -> None:
        """
        The smarthost is greeted with the HELO name and gets the sender in
        MAIL FROM, each remote recipient once in RCPT TO, and the message
        byte for byte (dot-stuffing undone).
        """
        self.listen()
        d = self.submission().submit(
            "alice",
            "alice@example.org",
            ["x@remote.example", "y@remote.example", "X@remote.example"],
            MESSAGE,
        )
        self.assertNoResult(d)
        self.connect()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.smarthost.helo, [b"eas.example.org"] * 2)
        self.assertEqual(self.smarthost.mailFrom, ["alice@example.org"])
        self.assertEqual(self.smarthost.rcptTo, ["x@remote.example", "y@remote.example"])
        self.assertEqual(
            self.smarthost.delivered, [("x@remote.example", MESSAGE), ("y@remote.example", MESSAGE)]
        )
        self.assertEqual(self.reactor.getDelayedCalls(), [], "timeouts cancelled")

    def test_bareLineFeeds(self) -> None:
        """
        A message with bare LF line ends goes out with CRLF, never
        C{\\r\\r\\n}; one without a final line end gets one.
        """
        self.listen()
        d = self.submission().submit(
            "alice", "alice@example.org", ["x@remote.example"], b"Subject: lf\n\nbody\n.dot"
        )
        self.connect()
        self.successResultOf(d)
        self.assertEqual(
            self.smarthost.delivered, [("x@remote.example", b"Subject: lf\r\n\r\nbody\r\n.dot\r\n")]
        )

    def test_dotAtChunkEdge(self) -> None:
        """
        Lines starting with C{.} right where the client's 16 KiB file chunks
        meet arrive intact: C{.one} starts a chunk of the DATA bytes we
        send, C{.two} would start one if the message went to Twisted's
        per-chunk transform as LF text (which misses such a dot).
        """
        chunk = 2**14
        head = b"Subject: edge\n\n"
        # Sent as CRLF, each of the lines so far grows by one byte.
        fillerA = b"x" * (chunk - len(head) - 2 - 2) + b"\n"
        fillerB = b"y" * (2 * chunk - len(head) - len(fillerA) - len(b".one\n") - 1) + b"\n"
        raw = head + fillerA + b".one\n" + fillerB + b".two\ntail\n"
        self.assertEqual(len(smtpData(head + fillerA)), chunk)
        self.assertEqual(len(head + fillerA + b".one\n" + fillerB), 2 * chunk)
        self.listen()
        d = self.submission().submit("alice", "alice@example.org", ["x@remote.example"], raw)
        self.connect()
        self.successResultOf(d)
        self.assertEqual(
            self.smarthost.delivered, [("x@remote.example", raw.replace(b"\n", b"\r\n"))]
        )

    def test_smtpData(self) -> None:
        """
        L{smtpData} makes CRLF lines, stuffs leading dots and ends the
        last line.
        """
        self.assertEqual(smtpData(b"a\n.b\r\n..c"), b"a\r\n..b\r\n...c\r\n")
        self.assertEqual(smtpData(b""), b"")

    def test_mixed(self) -> None:
        """
        Local recipients get their Inbox copy and remote ones theirs through
        the smarthost, from one submission.
        """
        self.listen()
        d = self.submission().submit(
            "alice", "alice@example.org", ["bob@example.org", "x@remote.example"], MESSAGE
        )
        self.assertEqual(self.inbox("bob"), [], "remote delivery goes first")
        self.connect()
        self.successResultOf(d)
        self.assertEqual(self.smarthost.rcptTo, ["x@remote.example"])
        self.assertEqual(self.smarthost.delivered, [("x@remote.example", MESSAGE)])
        self.assertEqual(self.inbox("bob"), [b"Return-Path: <alice@example.org>\r\n" + MESSAGE])

    def test_refusedRecipient(self) -> None:
        """
        A 550 for the only recipient is a permanent failure naming the
        address; no local copy is delivered.
        """
        self.listen()
        self.smarthost.refuse["x@remote.example"] = 550
        d = self.submission().submit(
            "alice", "alice@example.org", ["x@remote.example", "bob@example.org"], MESSAGE
        )
        self.connect()
        error = self.submissionError(d)
        self.assertTrue(error.permanent)
        self.assertIn("x@remote.example: 550", error.message)
        self.assertEqual(self.smarthost.delivered, [])
        self.assertEqual(self.inbox("bob"), [])

    def test_temporarilyRefusedRecipient(self) -> None:
        """
        When every recipient is refused and one refusal is 4xx, the failure
        is temporary, even if the last reply was 5xx.
        """
        self.listen()
        self.smarthost.refuse.update({"x@remote.example": 451, "y@remote.example": 550})
        d = self.submission().submit(
            "alice", "alice@example.org", ["x@remote.example", "y@remote.example"], MESSAGE
        )
        self.connect()
        self.assertFalse(self.submissionError(d).permanent)

    def test_partlyRefused(self) -> None:
        """
        When the smarthost takes the message for some recipients and refuses
        others, those got it and the submission fails for the rest.
        """
        self.listen()
        self.smarthost.refuse["y@remote.example"] = 550
        d = self.submission().submit(
            "alice", "alice@example.org", ["x@remote.example", "y@remote.example"], MESSAGE
        )
        self.connect()
        error = self.submissionError(d)
        self.assertTrue(error.permanent)
        self.assertIn("y@remote.example", error.message)
        self.assertEqual(self.smarthost.delivered, [("x@remote.example", MESSAGE)])

    def test_dataRefused(self) -> None:
        """
        A 5xx at the end of DATA is permanent, a 4xx temporary.
        """
        for code, permanent in [(554, True), (452, False)]:
            self.setUp()
            self.listen()
            self.smarthost.refuseData = code
            d = self.submission().submit("alice", "alice@example.org", ["x@remote.example"], MESSAGE)
            self.connect()
            error = self.submissionError(d)
            self.assertEqual(error.permanent, permanent, code)
            self.assertIn(str(code), error.message)

    def test_connectionRefused(self) -> None:
        """
        A smarthost that cannot be reached is a temporary failure.
        """
        d = self.submission().submit("alice", "alice@example.org", ["x@remote.example"], MESSAGE)
        self.completer.failOnce(Failure(ConnectionRefusedError()))
        error = self.submissionError(d)
        self.assertFalse(error.permanent)
        self.assertEqual(error.message, "cannot connect to the smarthost")

    def test_connectionLost(self) -> None:
        """
        A smarthost that hangs up before answering is a temporary failure,
        not a submission waiting for ever.
        """

        class Rude(Protocol):
            def connectionMade(self) -> None:
                self.transport.loseConnection()

        self.serverFactory = Factory.forProtocol(Rude)
        d = self.submission().submit("alice", "alice@example.org", ["x@remote.example"], MESSAGE)
        self.connect()
        self.assertFalse(self.submissionError(d).permanent)

    def test_timeout(self) -> None:
        """
        A smarthost that never answers times out on the injected clock, as
        a temporary failure.
        """
        self.serverFactory = Factory.forProtocol(Protocol)
        s = self.submission()
        d = s.submit("alice", "alice@example.org", ["x@remote.example"], MESSAGE)
        pump = self.connect()
        self.assertNoResult(d)
        self.reactor.advance(s._timeout)
        pump.flush()
        self.assertFalse(self.submissionError(d).permanent)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_cancel(self) -> None:
        """
        Cancelling a submission during the SMTP session drops the connection
        before the message is handed over.
        """
        self.listen()
        d = self.submission().submit("alice", "alice@example.org", ["x@remote.example"], MESSAGE)
        pump = self.connect(greet=False)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        pump.flush()
        self.assertEqual(self.smarthost.delivered, [])

    def test_requireTLSWithoutSTARTTLS(self) -> None:
        """
        With TLS required and a smarthost not offering STARTTLS, nothing is
        sent: a permanent failure.
        """
        self.listen()
        d = self.submission(requireTLS=True, tlsMode=TLSMode(startTLSOptions=FakeTLS())).submit(  # type: ignore[arg-type]
            "alice", "alice@example.org", ["x@remote.example"], MESSAGE
        )
        self.connect()
        self.assertTrue(self.submissionError(d).permanent)
        self.assertEqual(self.smarthost.mailFrom, [])

    def test_startTLSAndAuth(self) -> None:
        """
        With TLS required and credentials, the client upgrades with
        STARTTLS, then logs in, then sends.
        """
        self.listen(tls=FakeTLS(), auth=True)
        s = self.submission(
            credentials=("relay", "s3cret"),
            requireTLS=True,
            tlsMode=TLSMode(startTLSOptions=FakeTLS()),  # type: ignore[arg-type]
        )
        d = s.submit("alice", "alice@example.org", ["x@remote.example"], MESSAGE)
        pump = self.connect()
        self.successResultOf(d)
        self.assertTrue(pump.server.startedTLS)
        self.assertEqual(self.smarthost.authenticated, [b"relay"])
        self.assertEqual(self.smarthost.delivered, [("x@remote.example", MESSAGE)])

    def test_authDeclined(self) -> None:
        """
        Credentials the smarthost refuses are a permanent failure.
        """
        self.listen(tls=FakeTLS(), auth=True)
        s = self.submission(
            credentials=("relay", "wrong"),
            requireTLS=True,
            tlsMode=TLSMode(startTLSOptions=FakeTLS()),  # type: ignore[arg-type]
        )
        d = s.submit("alice", "alice@example.org", ["x@remote.example"], MESSAGE)
        self.connect()
        error = self.submissionError(d)
        self.assertTrue(error.permanent)
        self.assertNotIn("wrong", error.message)
        self.assertEqual(self.smarthost.delivered, [])

    def userSubmission(self, **kw: Any) -> Submission:
        """
        A submission as the IMAP bridge builds it: AUTH with the
        submitting user's own login (here the fake's "relay" account).
        """
        asked: List[str] = []
        self.asked = asked

        def own(user: str) -> Optional[Tuple[str, str]]:
            asked.append(user)
            return ("relay", "s3cret")

        return Submission(
            self.directory,
            self.backend,
            TCP4ClientEndpoint(self.reactor, "127.0.0.1", PORT),
            self.reactor,
            "eas.example.org",
            requireTLS=False,
            tlsMode=TLSMode(required=False),
            userCredentials=own,
            **kw,
        )

    def test_userCredentialsWhenOffered(self) -> None:
        """
        Without configured credentials, the submitting user's own login is
        used for AUTH when the smarthost offers it.
        """
        self.listen(auth=True)
        d = self.userSubmission().submit("alice", "alice@example.org", ["x@remote.example"], MESSAGE)
        self.connect()
        self.successResultOf(d)
        self.assertEqual(self.asked, ["alice"])
        self.assertEqual(self.smarthost.authenticated, [b"relay"])
        self.assertEqual(self.smarthost.delivered, [("x@remote.example", MESSAGE)])

    def test_userCredentialsNotOffered(self) -> None:
        """
        A smarthost that offers no AUTH gets the mail without it: the
        user's own login is used only where AUTH is offered.
        """
        self.listen()
        d = self.userSubmission().submit("alice", "alice@example.org", ["x@remote.example"], MESSAGE)
        self.connect()
        self.successResultOf(d)
        self.assertEqual(self.smarthost.authenticated, [])
        self.assertEqual(self.smarthost.delivered, [("x@remote.example", MESSAGE)])

    def test_authRequiredNotOffered(self) -> None:
        """
        With credentials configured, a smarthost that offers no AUTH gets no
        mail (a permanent failure) rather than unauthenticated mail.
        """
        self.listen()
        d = self.submission(credentials=("relay", "s3cret")).submit(
            "alice", "alice@example.org", ["x@remote.example"], MESSAGE
        )
        self.connect()
        self.assertTrue(self.submissionError(d).permanent)
        self.assertEqual(self.smarthost.mailFrom, [])

    def test_implicitTLS(self) -> None:
        """
        Behind an implicit-TLS endpoint, TLS required is satisfied without
        STARTTLS (the client does not ask for it inside TLS).
        """
        self.listen(tls=FakeTLS())
        d = self.submission(requireTLS=True, tlsMode=TLSMode(implicit=True)).submit(
            "alice", "alice@example.org", ["x@remote.example"], MESSAGE
        )
        pump = self.connect()
        self.successResultOf(d)
        self.assertFalse(pump.server.startedTLS)
        self.assertEqual(self.smarthost.delivered, [("x@remote.example", MESSAGE)])


class EndpointFromStringTests(SynchronousTestCase):
    """
    L{endpointFromString} accepts C{tls:} anywhere, C{tcp:} to loopback,
    and C{tcp:} elsewhere only when allowed and then with STARTTLS required.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def test_tls(self) -> None:
        """
        C{tls:HOST:PORT} is implicit TLS on a hostname endpoint.
        """
        endpoint, mode = endpointFromString(self.reactor, "tls:smtp.example.net:465", False)
        self.assertTrue(mode.implicit)
        self.assertTrue(mode.required)
        self.assertIsNone(mode.startTLSOptions)
        self.assertIsInstance(endpoint._wrappedEndpoint, HostnameEndpoint)  # type: ignore[attr-defined]
        self.assertEqual(endpoint._wrappedEndpoint._hostText, "smtp.example.net")  # type: ignore[attr-defined]
        self.assertEqual(endpoint._wrappedEndpoint._port, 465)  # type: ignore[attr-defined]

    def test_tcpLoopback(self) -> None:
        """
        C{tcp:} to C{localhost}, 127.0.0.0/8 or ::1 is plain TCP without
        TLS, whatever C{allowPlaintext} says.
        """
        for description in ("tcp:localhost:25", "tcp:127.0.0.2:25", "tcp:[::1]:25", "TCP:LocalHost:587"):
            endpoint, mode = endpointFromString(self.reactor, description, False)
            self.assertIsInstance(endpoint, HostnameEndpoint, description)
            self.assertEqual(mode, TLSMode(required=False), description)

    def test_tcpRemoteRefused(self) -> None:
        """
        C{tcp:} to another host is refused unless plaintext is allowed.
        """
        for description in ("tcp:smtp.example.net:587", "tcp:192.0.2.1:25", "tcp:[2001:db8::1]:25"):
            with self.assertRaises(ValueError) as e:
                endpointFromString(self.reactor, description, False)
            self.assertIn("refused", str(e.exception))

    def test_tcpRemoteAllowed(self) -> None:
        """
        When allowed, C{tcp:} to another host requires a verified STARTTLS.
        """
        endpoint, mode = endpointFromString(self.reactor, "tcp:smtp.example.net:587", True)
        self.assertIsInstance(endpoint, HostnameEndpoint)
        self.assertFalse(mode.implicit)
        self.assertTrue(mode.required)
        self.assertIsNotNone(mode.startTLSOptions)

    def test_malformed(self) -> None:
        """
        Other endpoint types, keyword syntax, missing or bad ports are
        refused with a message saying what is expected.
        """
        for description in (
            "ssl:smtp.example.net:465",
            "unix:/var/run/smtp",
            "tcp:host=localhost:port=25",
            "tcp:localhost",
            "tcp:localhost:0",
            "tcp:localhost:70000",
            "tcp::25",
            "tls:smtp.example.net:smtps",
            "smtp.example.net",
        ):
            self.assertRaises(ValueError, endpointFromString, self.reactor, description, True)

    def test_caFileMissing(self) -> None:
        """
        A CA file that does not exist fails at once, not at the first send.
        """
        self.assertRaises(
            OSError, endpointFromString, self.reactor, "tls:smtp.example.net:465", False, self.mktemp()
        )

    def test_caFileWithoutCertificate(self) -> None:
        """
        A CA file holding no certificate is refused.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a certificate\n")
        self.assertRaises(ValueError, endpointFromString, self.reactor, "tls:smtp.example.net:465", False, path)

    def test_isLoopback(self) -> None:
        """
        Only C{localhost} and loopback addresses count as loopback; names
        are not resolved.
        """
        for host in ("localhost", "LOCALHOST.", "127.0.0.1", "127.255.0.9", "::1"):
            self.assertTrue(isLoopback(host), host)
        for host in ("localhost.example.net", "10.0.0.1", "::2", "example.net", ""):
            self.assertFalse(isLoopback(host), host)
