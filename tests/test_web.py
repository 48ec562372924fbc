# -*- test-case-name: tests.test_web -*-
"""
Tests for L{directpush.web}: the whole HTTP stack (Site, cred, resources)
driven with raw bytes over a StringTransport and a Clock.
"""

from __future__ import annotations

import base64
import gzip
from typing import Any, Dict, List, Optional, Tuple

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from directpush import auth, wbxml, web
from directpush.protocol.dispatch import Dispatcher, Pending, Response, wbxmlResponse
from directpush.protocol.request import EASRequest

from .util import runNow

PASSWORD = b"Pa55-word"
CREDENTIALS = b"Basic " + base64.b64encode(b"alice@x.org:" + PASSWORD)
PING_QUERY = b"/Microsoft-Server-ActiveSync?Cmd=Ping&User=bob&DeviceId=dev1&DeviceType=iPhone"


def parseResponse(data: bytes) -> Tuple[int, Dict[str, str], bytes]:
    if not data:
        return 0, {}, b""  # nothing answered yet
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    code = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return code, headers, body


class WebTests(SynchronousTestCase):
    """
    HTTP in, protocol core, HTTP out.
    """

    def setUp(self) -> None:
        self.passwd = path = FilePath(self.mktemp())
        auth.writePasswd(path, {"alice@x.org": auth.hashPassword(PASSWORD.decode(), iterations=1000)})
        self.clock = Clock()
        self.seen: List[Tuple[EASRequest, Optional[wbxml.Element], bytes]] = []
        self.pending: List[Deferred] = []
        self.cancelled: List[Deferred] = []
        self.bigBody = b""

        async def ping(request: EASRequest, document, body: bytes) -> Response:
            self.seen.append((request, document, body))
            if self.bigBody:
                return Response(200, self.bigBody, "application/vnd.ms-sync.wbxml")
            if request.deviceId == "hang":
                d: Deferred[Response] = Deferred(self.cancelled.append)
                self.pending.append(d)
                return await d
            if request.deviceId == "later":
                later: Deferred[Response] = Deferred(self.cancelled.append)
                self.pending.append(later)
                return Pending(later)  # type: ignore[return-value]
            if request.deviceId == "boom":
                raise RuntimeError("handler bug")
            return wbxmlResponse(wbxml.E("Ping:Ping", wbxml.E("Status", "1")))

        dispatcher = Dispatcher({"Ping": ping})
        checker = auth.PasswdChecker(auth.PasswdFile(path), runNow, self.clock)
        portal = Portal(auth.Realm(web.makeUserResource(dispatcher, 4096)), [checker])
        self.site = web.buildSite(portal, self.clock, maxBody=4096)

    def connect(self) -> Tuple[object, StringTransport]:
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        proto.makeConnection(transport)
        return proto, transport

    def send(
        self,
        method: bytes = b"POST",
        path: bytes = PING_QUERY,
        headers: Optional[Dict[bytes, bytes]] = None,
        body: bytes = b"",
        authorization: Optional[bytes] = CREDENTIALS,
    ) -> Tuple[int, Dict[str, str], bytes]:
        proto, transport = self.connect()
        allHeaders = {b"Host": b"localhost", b"MS-ASProtocolVersion": b"14.1"}
        if authorization is not None:
            allHeaders[b"Authorization"] = authorization
        if body:
            allHeaders[b"Content-Type"] = b"application/vnd.ms-sync.wbxml"
        allHeaders.update(headers or {})
        allHeaders.setdefault(b"Content-Length", str(len(body)).encode())
        raw = method + b" " + path + b" HTTP/1.1\r\n"
        raw += b"".join(k + b": " + v + b"\r\n" for k, v in allHeaders.items())
        proto.dataReceived(raw + b"\r\n" + body)
        self.transport, self.proto = transport, proto
        return parseResponse(transport.value())

    def test_options(self) -> None:
        """
        OPTIONS lists versions and implemented commands, with no body.
        """
        code, headers, body = self.send(b"OPTIONS", b"/Microsoft-Server-ActiveSync")
        self.assertEqual(code, 200)
        self.assertEqual(headers["ms-asprotocolversions"], "12.1,14.0,14.1,16.0,16.1")
        self.assertEqual(headers["ms-asprotocolcommands"], "Ping")
        self.assertEqual(headers["allow"], "OPTIONS,POST")
        self.assertEqual((headers["content-length"], body), ("0", b""))

    def test_pathCase(self) -> None:
        """
        The endpoint's path matches in any letter case; other paths are 404.
        """
        self.assertEqual(self.send(b"OPTIONS", b"/microsoft-server-ACTIVESYNC")[0], 200)
        self.assertEqual(self.send(b"OPTIONS", b"/other")[0], 404)
        self.assertEqual(self.send(b"GET", b"/")[0], 404)

    def test_unauthenticated(self) -> None:
        """
        No credentials, a wrong password, an unknown user, garbage: 401
        with a Basic challenge, and nothing reaches the protocol.
        """
        for authorization in (
            None,
            b"Basic " + base64.b64encode(b"alice@x.org:nope"),
            b"Basic " + base64.b64encode(b"eve:" + PASSWORD),
            b"Basic !!!",
            b"Bearer abc",
        ):
            code, headers, _ = self.send(authorization=authorization)
            self.assertEqual(code, 401, authorization)
            self.assertEqual(headers["www-authenticate"], 'basic realm="directpush"')
        self.assertEqual(self.seen, [])

    def test_userFromCredentials(self) -> None:
        """
        The handler sees the authenticated user, whatever User says.
        """
        code, headers, body = self.send()
        self.assertEqual(code, 200)
        self.assertEqual(headers["content-type"], "application/vnd.ms-sync.wbxml")
        self.assertEqual(wbxml.decode(body).findtext("Status"), "1")
        request = self.seen[0][0]
        self.assertEqual((request.user, request.queryUser), ("alice@x.org", "bob"))

    def test_base64Query(self) -> None:
        """
        A POST in the base64 query form reaches the dispatcher.
        """
        blob = bytes([141, 18, 9, 4, 4]) + b"dev1" + b"\x00" + b"\x06iPhone"
        code, _, _ = self.send(path=b"/Microsoft-Server-ActiveSync?" + base64.b64encode(blob))
        self.assertEqual(code, 200)
        self.assertEqual(self.seen[0][0].command, "Ping")

    def test_refusals(self) -> None:
        """
        Unknown command 400, unimplemented 501, bad device id 400, GET 405.
        """
        base = b"/Microsoft-Server-ActiveSync?DeviceId=d1&DeviceType=t&Cmd="
        self.assertEqual(self.send(path=base + b"Frob")[0], 400)
        self.assertEqual(self.send(path=base + b"Sync")[0], 501)
        self.assertEqual(self.send(path=base.replace(b"d1", b"d%2F1") + b"Ping")[0], 400)
        self.assertEqual(self.send(b"GET", base + b"Ping")[0], 405)

    def test_gzipRequest(self) -> None:
        """
        A gzip body is inflated before the protocol sees it.
        """
        document = wbxml.encode(wbxml.E("Ping:Ping", wbxml.E("HeartbeatInterval", "480")))
        code, _, _ = self.send(
            headers={b"Content-Encoding": b"gzip"}, body=gzip.compress(document)
        )
        self.assertEqual(code, 200)
        self.assertEqual(self.seen[0][1].findtext("HeartbeatInterval"), "480")
        self.assertEqual(self.seen[0][2], document)

    def test_gzipRefusals(self) -> None:
        """
        A body that inflates past the limit is 413 (a 3 KB bomb of 3 MB
        never grows past the limit in memory); corrupt or truncated gzip
        400; other codings 415.
        """
        bomb = gzip.compress(b"\x00" * 3_000_000)
        self.assertLess(len(bomb), 4096)
        self.assertEqual(self.send(headers={b"Content-Encoding": b"gzip"}, body=bomb)[0], 413)
        good = gzip.compress(b"x" * 100)
        self.assertEqual(self.send(headers={b"Content-Encoding": b"gzip"}, body=b"garbage!")[0], 400)
        self.assertEqual(self.send(headers={b"Content-Encoding": b"gzip"}, body=good[:-10])[0], 400)
        self.assertEqual(self.send(headers={b"Content-Encoding": b"br"}, body=good)[0], 415)
        self.assertEqual(self.seen, [])

    def test_bodyLimit(self) -> None:
        """
        A declared length over the limit is 413 at once, before anyone is
        authenticated, and the connection closes; so is a chunked body that
        runs past it.
        """
        with capturedLogs() as events:
            code, headers, _ = self.send(
                headers={b"Content-Length": b"1000000000"}, authorization=None
            )
        self.assertEqual(code, 413)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(events[0]["size"], 1000000000)
        proto, transport = self.connect()
        proto.dataReceived(
            b"POST " + PING_QUERY + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"800\r\n" + b"x" * 0x800 + b"\r\n") * 3
        )
        self.assertEqual(parseResponse(transport.value())[0], 413)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.seen, [])

    def test_gzipResponse(self) -> None:
        """
        Large answers are gzipped when the client accepts it, with a
        Content-Length either way; small ones are not.
        """
        self.bigBody = b"abc" * 1000
        code, headers, body = self.send(headers={b"Accept-Encoding": b"gzip, deflate"})
        self.assertEqual(headers["content-encoding"], "gzip")
        self.assertEqual(int(headers["content-length"]), len(body))
        self.assertEqual(gzip.decompress(body), self.bigBody)
        code, headers, body = self.send()
        self.assertNotIn("content-encoding", headers)
        self.assertEqual(body, self.bigBody)
        code, headers, body = self.send(headers={b"Accept-Encoding": b"gzip;q=0"})
        self.assertNotIn("content-encoding", headers)
        self.bigBody = b""
        code, headers, body = self.send(headers={b"Accept-Encoding": b"gzip"})
        self.assertNotIn("content-encoding", headers)

    def test_handlerFailure(self) -> None:
        """
        A bug in a handler is logged and answered 503 with Retry-After,
        never 500 (iOS resyncs everything after repeated 500s).
        """
        with capturedLogs() as events:
            code, headers, body = self.send(path=PING_QUERY.replace(b"dev1", b"boom"))
        self.assertEqual((code, headers["retry-after"]), (503, "60"))
        self.assertNotIn(b"handler bug", body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(any(e.get("log_failure") for e in events))

    def test_disconnectCancels(self) -> None:
        """
        A client that goes away while its request waits cancels the wait,
        and nothing is written after.
        """
        self.send(path=PING_QUERY.replace(b"dev1", b"hang"))
        self.assertEqual(len(self.pending), 1)
        self.assertEqual(self.transport.value(), b"")
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.cancelled, self.pending)
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_pendingAnswer(self) -> None:
        """
        A handler's L{Pending} answer is written when it fires.
        """
        self.send(path=PING_QUERY.replace(b"dev1", b"later"))
        self.assertEqual(self.transport.value(), b"")
        self.pending[0].callback(wbxmlResponse(wbxml.E("Ping:Ping", wbxml.E("Status", "2"))))
        code, _, body = parseResponse(self.transport.value())
        self.assertEqual((code, wbxml.decode(body).findtext("Status")), (200, "2"))

    def test_pendingSheds(self) -> None:
        """
        A request answered L{Pending} keeps no query arguments, body or
        request headers but those its answer and the access log read; the
        answer still honours Accept-Encoding.
        """
        self.send(
            path=PING_QUERY.replace(b"dev1", b"later"),
            headers={b"Accept-Encoding": b"gzip", b"User-Agent": b"Phone/1", b"X-Other": b"x"},
            body=b"\x03\x01\x6a\x00\x45\x01",
        )
        [request] = self.proto._channel.requests
        self.assertEqual(request.args, {})
        self.assertTrue(request.content.closed)
        self.assertEqual(
            sorted(name for name, _ in request.requestHeaders.getAllRawHeaders()),
            [b"Accept-Encoding", b"User-Agent"],
        )
        self.pending[0].callback(Response(200, b"x" * 4000, "application/vnd.ms-sync.wbxml"))
        code, headers, body = parseResponse(self.transport.value())
        self.assertEqual((code, headers["content-encoding"], gzip.decompress(body)), (200, "gzip", b"x" * 4000))

    def test_pendingCancelledOnDisconnect(self) -> None:
        """
        A client that goes away cancels a L{Pending} answer's wait, quietly.
        """
        self.send(path=PING_QUERY.replace(b"dev1", b"later"))
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.cancelled, self.pending)
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_pendingFailure(self) -> None:
        """
        A L{Pending} answer that fails is answered 503, as a failing
        handler is.
        """
        self.send(path=PING_QUERY.replace(b"dev1", b"later"))
        self.pending[0].errback(RuntimeError("later bug"))
        self.assertEqual(parseResponse(self.transport.value())[0], 503)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_longWaitSurvivesIdleTimeout(self) -> None:
        """
        A request that waits an hour is not cut by the site's idle timeout.
        """
        self.send(path=PING_QUERY.replace(b"dev1", b"hang"))
        self.clock.advance(3600)
        self.assertFalse(self.transport.disconnecting)
        self.pending[0].callback(wbxmlResponse(wbxml.E("Ping:Ping", wbxml.E("Status", "1"))))
        self.assertEqual(parseResponse(self.transport.value())[0], 200)

    def test_headerNotUTF8(self) -> None:
        """
        Regression (torture suite): a header value that is not UTF-8 made
        twisted.web raise while the dispatcher read it, answered 503 with
        a logged traceback. It is read as Latin-1: here a bad protocol
        version, so 400, and no failure logged.
        """
        with capturedLogs() as logs:
            code, _, body = self.send(headers={b"MS-ASProtocolVersion": b"\xf4\x90\x80"})
        self.assertEqual(code, 400)
        self.assertIn(b"not supported", body)
        self.assertEqual([e for e in logs if "log_failure" in e], [])

    def test_otherHeaderNotUTF8(self) -> None:
        """
        Bytes above 127 in a header the server reads are passed on, not
        fatal: a policy key with them is a plain 400.
        """
        code, _, _ = self.send(headers={b"X-MS-PolicyKey": b"\xff\xfe"})
        self.assertEqual(code, 400)

    def test_loginBusy(self) -> None:
        """
        When password checks are at capacity the answer is 503 with
        Retry-After, not 401: phones retry instead of asking their user
        for the password.
        """
        checker = auth.PasswdChecker(auth.PasswdFile(self.passwd), runNow, self.clock, maxChecking=0)
        portal = Portal(auth.Realm(web.makeUserResource(Dispatcher({}), 4096)), [checker])
        self.site = web.buildSite(portal, self.clock, maxBody=4096)
        code, headers, _ = self.send()
        self.assertEqual((code, headers.get("retry-after")), (503, "5"))
        code, _, _ = self.send(authorization=b"Basic " + base64.b64encode(b"alice@x.org:wrong"))
        self.assertEqual(code, 503)


@implementer(ICredentialsChecker)
class _SlowChecker:
    """
    A checker whose answers the test gives, later.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self) -> None:
        self.pending: List[Deferred] = []

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred:
        d: Deferred = Deferred()
        self.pending.append(d)
        return d


class GuardTests(SynchronousTestCase):
    """
    L{web.BasicGuard} when the login takes time or fails unexpectedly.
    """

    def setUp(self) -> None:
        self.checker = _SlowChecker()
        self.seen: List[str] = []

        async def ping(request: EASRequest, document, body: bytes) -> Response:
            self.seen.append(request.user)
            return wbxmlResponse(wbxml.E("Ping:Ping", wbxml.E("Status", "1")))

        portal = Portal(auth.Realm(web.makeUserResource(Dispatcher({"Ping": ping}), 4096)), [self.checker])
        self.site = web.buildSite(portal, Clock(), maxBody=4096)
        self.proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.proto.dataReceived(
            b"POST " + PING_QUERY + b" HTTP/1.1\r\nHost: localhost\r\nMS-ASProtocolVersion: 14.1\r\n"
            b"Authorization: " + CREDENTIALS + b"\r\nContent-Length: 0\r\n\r\n"
        )

    def test_slowLogin(self) -> None:
        """
        The request is rendered for the user once the login completes.
        """
        self.assertEqual(self.transport.value(), b"")
        self.checker.pending[0].callback(b"alice@x.org")
        self.assertEqual(parseResponse(self.transport.value())[0], 200)
        self.assertEqual(self.seen, ["alice@x.org"])

    def test_goneBeforeLogin(self) -> None:
        """
        A client gone before its login completes gets nothing rendered and
        nothing written, whether the login succeeds or fails.
        """
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.checker.pending[0].callback(b"alice@x.org")
        self.assertEqual((self.transport.value(), self.seen), (b"", []))

    def test_unexpectedLoginError(self) -> None:
        """
        A login that fails for another reason than bad credentials is
        logged and answered 500.
        """
        self.checker.pending[0].errback(RuntimeError("checker bug"))
        self.assertEqual(parseResponse(self.transport.value())[0], 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.seen, [])


class SlimTransportTests(TestCase):
    """
    L{web.slimTransports} over real sockets.
    """

    async def test_writeBufferInSlots(self) -> None:
        """
        Connections accepted after L{web.slimTransports} write as usual,
        and writing adds nothing to their instance dict, where it does to
        Twisted's own transport.
        """
        from twisted.internet import reactor

        accepted: List[Protocol] = []

        class Greet(Protocol):
            def connectionMade(self) -> None:
                accepted.append(self)
                self.transport.write(b"hello")

        class Read(Protocol):
            def __init__(self) -> None:
                self.got: Deferred[bytes] = Deferred()

            def dataReceived(self, data: bytes) -> None:
                self.got.callback(data)

        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Greet))
        self.addCleanup(port.stopListening)

        async def greeted() -> Any:
            client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Read())
            self.addCleanup(client.transport.loseConnection)
            self.assertEqual(await client.got, b"hello")
            server = accepted[-1].transport
            self.addCleanup(server.loseConnection)
            return server

        plain = await greeted()
        self.assertIn("dataBuffer", vars(plain))
        web.slimTransports(port)
        slim = await greeted()
        self.assertIsInstance(slim, web._SlimServer)
        self.assertEqual((slim.dataBuffer, slim.offset), (b"", 0))
        self.assertEqual(set(vars(slim)), set(vars(plain)) - {"dataBuffer", "offset"})
