# -*- test-case-name: tests.test_throttle -*-
"""
Tests for L{directpush.throttle}: request rates, requests in progress,
connections per peer and deadlines for slow clients, all on a Clock.
"""

from __future__ import annotations

import base64
from typing import List, Optional, Tuple

from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.filepath import FilePath
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from directpush import auth, tap, throttle, wbxml, web
from directpush.protocol.dispatch import Dispatcher, Response, wbxmlResponse
from directpush.protocol.request import EASRequest

from .util import runNow

CREDENTIALS = b"Basic " + base64.b64encode(b"alice:pw")
HEADERS = b"Host: x\r\nMS-ASProtocolVersion: 14.1\r\nAuthorization: " + CREDENTIALS + b"\r\n"


def query(device: str = "dev1", command: str = "Ping") -> bytes:
    return f"Cmd={command}&User=alice&DeviceId={device}&DeviceType=iPhone".encode()


def header(name: str) -> Optional[str]:
    return "14.1" if name == "MS-ASProtocolVersion" else None


def messages(logs: List[dict]) -> List[str]:
    return [e["log_format"] for e in logs if e.get("log_namespace") == "directpush.throttle"]


class TokenBucketTests(SynchronousTestCase):
    def test_burstThenRate(self) -> None:
        """
        C{burst} takes are granted at once, then one per 1/rate seconds;
        a refusal says how long to wait.
        """
        clock = Clock()
        buckets = throttle.TokenBuckets(2.0, 3, clock)
        self.assertEqual([buckets.take(("a",)) for _ in range(3)], [0, 0, 0])
        self.assertAlmostEqual(buckets.take(("a",)), 0.5)
        self.assertEqual(buckets.take(("b",)), 0)
        clock.advance(0.5)
        self.assertEqual(buckets.take(("a",)), 0)
        self.assertGreater(buckets.take(("a",)), 0)

    def test_fullBucketsForgotten(self) -> None:
        """
        Keys whose buckets have refilled are dropped: memory follows the
        active keys only.
        """
        clock = Clock()
        buckets = throttle.TokenBuckets(1.0, 2, clock)
        for i in range(100):
            buckets.take((str(i),))
        self.assertEqual(len(buckets), 100)
        clock.advance(61)
        buckets.take(("new",))
        self.assertEqual(len(buckets), 1)


class ThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pending: List[Deferred] = []

        async def ping(request: EASRequest, document, body: bytes) -> Response:
            if request.deviceId.startswith("hang"):
                d: Deferred[Response] = Deferred()
                self.pending.append(d)
                return await d
            return wbxmlResponse(wbxml.E("Ping:Ping", wbxml.E("Status", "1")))

        self.limits = throttle.Limits(deviceRate=1.0, deviceBurst=5, userRate=5.0, userBurst=12, userConcurrent=3)
        self.throttle = throttle.Throttle(Dispatcher({"Ping": ping}), self.limits, self.clock)

    def call(self, q: bytes, user: str = "alice") -> Tuple[Deferred, List]:
        result: List = []
        d = Deferred.fromCoroutine(self.throttle.dispatch(q, header, user, b""))
        d.addBoth(result.append)
        return d, result

    def code(self, q: bytes, user: str = "alice") -> Response:
        _, result = self.call(q, user)
        [response] = result
        return response

    def test_tightLoopDevice(self) -> None:
        """
        A device in a tight loop gets 503 with Retry-After once its burst
        is used; the same user's other device and other users are served.
        """
        with capturedLogs() as logs:
            codes = [self.code(query("loop")).code for _ in range(8)]
            self.assertEqual(codes, [200] * 5 + [503] * 3)
            refused = self.code(query("loop"))
            self.assertEqual(dict(refused.headers)["Retry-After"], "1")
            self.assertEqual(self.code(query("other")).code, 200)
            self.assertEqual(self.code(query("loop"), user="bob").code, 200)
        self.assertIn("{user} device {device} over the request rate; retry in {wait:.0f} s", messages(logs))
        self.clock.advance(1)
        self.assertEqual(self.code(query("loop")).code, 200)

    def test_userRate(self) -> None:
        """
        A user's devices together are held to the user's rate, malformed
        requests included.
        """
        codes = [self.code(query(f"d{i}")).code for i in range(10)]
        codes += [self.code(b"Cmd=Nonsense").code for _ in range(2)]
        self.assertEqual(codes, [200] * 10 + [400] * 2)
        refused = self.code(query("d99"))
        self.assertEqual(refused.code, 503)
        self.assertIn(b"user request rate", refused.body)
        self.assertEqual(self.code(query("d99"), user="bob").code, 200)

    def test_concurrent(self) -> None:
        """
        Requests in progress (waiting Pings) are capped per user; a
        cancelled or finished one frees its place.
        """
        first, _ = self.call(query("hang1"))
        self.call(query("hang2"))
        self.call(query("hang3"))
        self.assertEqual(self.throttle.inProgress("alice"), 3)
        with capturedLogs() as logs:
            refused = self.code(query("dev9"))
        self.assertEqual((refused.code, dict(refused.headers)["Retry-After"]), (503, "10"))
        self.assertEqual(len(messages(logs)), 1)
        self.assertEqual(self.code(query("dev9"), user="bob").code, 200)
        first.cancel()
        self.assertEqual(self.throttle.inProgress("alice"), 2)
        self.pending[1].callback(wbxmlResponse(wbxml.E("Ping:Ping", wbxml.E("Status", "1"))))
        self.assertEqual(self.throttle.inProgress("alice"), 1)
        self.assertEqual(self.code(query("dev9")).code, 200)

    def test_options(self) -> None:
        """
        OPTIONS headers come from the real dispatcher.
        """
        self.assertIn(("MS-ASProtocolCommands", "Ping"), self.throttle.optionsHeaders())


class ChannelTests(SynchronousTestCase):
    """
    The HTTP channel's deadlines and per-peer cap, with raw bytes.
    """

    def setUp(self) -> None:
        path = FilePath(self.mktemp())
        auth.writePasswd(path, {"alice": "{PLAIN}pw"})
        self.clock = Clock()

        async def ping(request: EASRequest, document, body: bytes) -> Response:
            return wbxmlResponse(wbxml.E("Ping:Ping", wbxml.E("Status", "1")))

        checker = auth.PasswdChecker(auth.PasswdFile(path), runNow, self.clock)
        self.portal = Portal(auth.Realm(web.makeUserResource(Dispatcher({"Ping": ping}), 1 << 20)), [checker])
        self.limits = throttle.Limits(peerConnections=2, headerTimeout=30, bodyTimeout=20, minBodyRate=100)
        self.guard = throttle.ConnectionGuard(self.limits, self.clock)
        self.site = web.buildSite(self.portal, self.clock, maxBody=1 << 20, guard=self.guard)

    def connect(self, host: str = "10.0.0.1", site=None):
        site = site or self.site
        address = IPv4Address("TCP", host, 5000)
        proto = site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        proto.makeConnection(transport)
        return proto, transport

    def request(self, body: bytes = b"") -> bytes:
        return (
            b"POST /Microsoft-Server-ActiveSync?" + query() + b" HTTP/1.1\r\n" + HEADERS
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )

    def trickle(self, proto, transport, data: bytes, every: float) -> int:
        """
        Feed C{data} one byte each C{every} seconds while connected; return
        the bytes fed.
        """
        fed = 0
        for byte in data:
            if transport.disconnecting:
                break
            proto.dataReceived(bytes([byte]))
            fed += 1
            self.clock.advance(every)
        return fed

    def test_unguardedTrickleHoldsForever(self) -> None:
        """
        The finding this guards against: with twisted.web alone, a client
        sending a header byte every 5 seconds keeps its connection for as
        long as it likes (the idle timeout restarts with every byte).
        """
        site = web.buildSite(self.portal, self.clock, maxBody=1 << 20)
        proto, transport = self.connect(site=site)
        raw = self.request()
        fed = self.trickle(proto, transport, raw[:-4], 5)
        self.assertEqual(fed, len(raw) - 4)
        self.assertFalse(transport.disconnecting)

    def test_slowHeaders(self) -> None:
        """
        Headers not complete within headerTimeout: 408, connection closed,
        logged.
        """
        proto, transport = self.connect()
        with capturedLogs() as logs:
            fed = self.trickle(proto, transport, self.request(), 5)
        self.assertEqual(fed, 6)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(transport.disconnecting)
        self.assertIn("{peer} did not send the request {phase} in time; connection closed", messages(logs))
        self.assertEqual(self.guard.timedOut, 1)

    def test_slowBody(self) -> None:
        """
        A body trickled a byte at a time is cut after about bodyTimeout;
        one that keeps minBodyRate is received whole.
        """
        proto, transport = self.connect()
        body = b"x" * 200
        raw = self.request(body)
        proto.dataReceived(raw[: -len(body)])
        with capturedLogs():
            fed = self.trickle(proto, transport, body, 2)
        self.assertEqual(fed, 11)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))

        proto, transport = self.connect("10.0.0.2")
        proto.dataReceived(raw[: -len(body)])
        for i in range(0, len(body), 100):
            self.clock.advance(1)
            proto.dataReceived(body[i : i + 100])
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value()[:40])
        self.assertFalse(transport.disconnecting)

    def test_keepAliveNotCut(self) -> None:
        """
        A whole request answered, then a quiet keep-alive connection: no
        408; a second request on it gets its own deadline.
        """
        proto, transport = self.connect()
        proto.dataReceived(self.request())
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))
        transport.clear()
        self.clock.advance(45)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(self.request()[:10])
        self.clock.advance(31)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))

    def test_longLine(self) -> None:
        """
        Regression (torture suite): a header line over twisted.web's line
        limit dropped the connection with no answer; now 431, logged.
        """
        proto, transport = self.connect()
        raw = self.request()
        with capturedLogs() as logs:
            proto.dataReceived(raw[:40] + b"X-Big: " + b"a" * 20000 + b"\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 "))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(messages(logs)), 1)

    def test_peerConnections(self) -> None:
        """
        A third connection from one address gets 503 and is closed; other
        addresses are not affected; a closed connection frees its place.
        """
        first, _ = self.connect()
        self.connect()
        with capturedLogs() as logs:
            third, transport = self.connect()
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))
        self.assertIn(b"Retry-After: 30", transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(messages(logs)), 1)
        third.connectionLost(None)
        self.assertEqual(self.guard.connections("10.0.0.1"), 2)
        _, other = self.connect("10.0.0.9")
        self.assertFalse(other.disconnecting)
        first.connectionLost(None)
        _, again = self.connect()
        self.assertFalse(again.disconnecting)


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        options = tap.Options()
        options.parseOptions([])
        self.assertEqual(options["limits"], throttle.Limits())

    def test_given(self) -> None:
        options = tap.Options()
        options.parseOptions(
            ["--device-rate", "0.5/10", "--user-rate", "3/30", "--user-concurrent", "7",
             "--peer-connections", "0", "--request-timeout", "10/5/100"]
        )
        self.assertEqual(
            options["limits"],
            throttle.Limits(0.5, 10, 3.0, 30, 7, 0, 10.0, 5.0, 100),
        )

    def test_bad(self) -> None:
        for args in (["--device-rate", "5"], ["--user-rate", "a/b"], ["--user-concurrent", "0"],
                     ["--peer-connections", "-1"], ["--request-timeout", "1/2"]):
            options = tap.Options()
            self.assertRaises(usage.UsageError, usage.Options.parseOptions, options, args)
