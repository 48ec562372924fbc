"""
The carrier simulator: relays bytes, then silently stops after an idle
timeout, without closing either side.
"""

from __future__ import annotations

from typing import List

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from directpush.device.carrier import CarrierRelay


class FakeEndpoint:
    """
    Connects to a L{StringTransport}, now or when told.
    """

    def __init__(self, immediate: bool = True) -> None:
        self.immediate = immediate
        self.protocols: List[Protocol] = []
        self.transports: List[StringTransport] = []
        self.waiting: List[object] = []

    def connect(self, factory):
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        self.protocols.append(protocol)
        self.transports.append(transport)
        if self.immediate:
            protocol.makeConnection(transport)
            return defer.succeed(protocol)
        d = defer.Deferred()
        self.waiting.append((d, protocol, transport))
        return d

    def finish(self) -> None:
        for d, protocol, transport in self.waiting:
            protocol.makeConnection(transport)
            d.callback(protocol)
        self.waiting = []


class RelayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        self.relay = CarrierRelay(self.endpoint, self.clock, 780)
        self.device = StringTransport()
        self.inbound = self.relay.buildProtocol(None)
        self.inbound.makeConnection(self.device)
        self.server = self.endpoint.transports[0]
        self.outbound = self.endpoint.protocols[0]

    def test_relaysBothWays(self) -> None:
        """
        Bytes go through in both directions while the link is busy.
        """
        self.inbound.dataReceived(b"POST / HTTP/1.1\r\n")
        self.assertEqual(self.server.value(), b"POST / HTTP/1.1\r\n")
        self.outbound.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertEqual(self.device.value(), b"HTTP/1.1 200 OK\r\n")

    def test_idleCutIsSilent(self) -> None:
        """
        After the idle timeout nothing passes in either direction, and
        neither side is closed.
        """
        self.inbound.dataReceived(b"ping")
        self.clock.advance(779)
        self.outbound.dataReceived(b"a")
        self.assertEqual(self.device.value(), b"a")
        self.clock.advance(780)
        [link] = self.relay.links
        self.assertTrue(link.cut)
        self.outbound.dataReceived(b"late answer")
        self.inbound.dataReceived(b"more")
        self.assertEqual(self.device.value(), b"a")
        self.assertEqual(self.server.value(), b"ping")
        self.assertFalse(self.device.disconnecting)
        self.assertFalse(self.server.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closeAfterCutNotPropagated(self) -> None:
        """
        A side that closes after the cut is not told to the other side.
        """
        self.clock.advance(780)
        self.outbound.connectionLost(None)
        self.assertFalse(self.device.disconnecting)
        self.inbound.connectionLost(None)
        self.assertEqual(self.relay.links, set())

    def test_closeWhileAlivePropagates(self) -> None:
        """
        Before the cut, a close goes through and the timer stops.
        """
        self.outbound.connectionLost(None)
        self.assertTrue(self.device.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_abortAll(self) -> None:
        """
        Stopping the relay closes both sides of every link.
        """
        self.clock.advance(780)
        self.relay.abortAll()
        self.assertTrue(self.device.disconnected)
        self.assertTrue(self.server.disconnected)

    def test_buffersUntilConnected(self) -> None:
        """
        Bytes sent before the server connection is up are sent once it is.
        """
        endpoint = FakeEndpoint(immediate=False)
        relay = CarrierRelay(endpoint, self.clock, 10)
        device = StringTransport()
        inbound = relay.buildProtocol(None)
        inbound.makeConnection(device)
        inbound.dataReceived(b"early")
        endpoint.finish()
        self.assertEqual(endpoint.transports[0].value(), b"early")


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class _Collect(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.lost.callback(None)


class RealSocketTests(TestCase):
    """
    The relay on real sockets (the real reactor, real time: short).
    """

    timeout = 20

    async def test_silentCutOnRealSockets(self) -> None:
        """
        An echo through the relay works; after the idle timeout it stops,
        and the device's socket stays open.
        """
        from twisted.internet import reactor

        echo = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(_Echo))
        self.addCleanup(echo.stopListening)
        relay = CarrierRelay(TCP4ClientEndpoint(reactor, "127.0.0.1", echo.getHost().port), reactor, 0.3)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(relay)
        self.addCleanup(port.stopListening)
        client = _Collect()
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(Factory.forProtocol(lambda: client))
        client.transport.write(b"hello")
        for _ in range(100):
            if client.received:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(client.received, b"hello")
        await deferLater(reactor, 0.5, lambda: None)
        client.transport.write(b"again")
        await deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(client.received, b"hello")
        self.assertFalse(client.lost.called)
        relay.abortAll()
        await client.lost
