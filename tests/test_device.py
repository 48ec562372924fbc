"""
The seed's worked example, replayed on a Clock: the reference device (its
real HTTP client, L{Agent}) talks through the carrier simulator to the
server's real HTTP face, protocol core and push hub, all over iosim.

The server here is built as L{directpush.tap.buildService} wires it, but
with the memory backend and memory state store: the maildir backend and
the SQLite store run on thread pools, which a Clock cannot drive.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.python.filepath import FilePath
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, HTTPConnectionPool

from directpush import auth, web
from directpush.backends.memory import MemoryBackend
from directpush.device.carrier import CarrierRelay
from directpush.device.client import Device, HTTPTransport
from directpush.device.heartbeat import Heartbeat
from directpush.protocol.commands import makeDispatcher
from directpush.protocol.core import Services
from directpush.push import PushHub
from directpush.state.memory import MemoryStateStore

USER = "erin@example.org"
PASSWORD = "Beat-The-Carrier-1"
MIN = 60
MESSAGE = b"From: dave@example.org\r\nTo: erin@example.org\r\nSubject: Pushed to you\r\n\r\nHi\r\n"


class Network:
    """
    iosim connections, pumped together.
    """

    def __init__(self, clock: MemoryReactorClock) -> None:
        self.clock = clock
        self.pumps: List[iosim.IOPump] = []

    def connect(self, serverFactory: Any, clientFactory: Any) -> Any:
        address = IPv4Address("TCP", "127.0.0.1", 443)
        server = serverFactory.buildProtocol(address)
        client = clientFactory.buildProtocol(address)
        pump = iosim.connect(
            server, iosim.FakeTransport(server, True), client, iosim.FakeTransport(client, False),
            greet=False, clock=self.clock,
        )
        self.pumps.append(pump)
        return client

    def flush(self) -> None:
        for _ in range(1000):
            moved = False
            for pump in list(self.pumps):
                if pump.pump(advanceClock=False):
                    moved = True
                if pump.clientIO.disconnected and pump.serverIO.disconnected:
                    self.pumps.remove(pump)
            self.clock.advance(0)
            if not moved:
                return
        raise AssertionError("the network never settles")

    def run(self, seconds: int) -> None:
        """
        Let time pass one second at a time, moving bytes as they come.
        """
        self.flush()
        for _ in range(seconds):
            self.clock.advance(1)
            self.flush()


class _Endpoint:
    def __init__(self, network: Network, serverFactory: Any) -> None:
        self.network = network
        self.serverFactory = serverFactory

    def connect(self, factory: Any) -> "defer.Deferred[Any]":
        return defer.succeed(self.network.connect(self.serverFactory, factory))


class _EndpointFactory:
    def __init__(self, endpoint: _Endpoint) -> None:
        self.endpoint = endpoint

    def endpointForURI(self, uri: Any) -> _Endpoint:
        return self.endpoint


def buildServer(clock: MemoryReactorClock, passwdPath: FilePath[str]) -> Tuple[Any, MemoryBackend]:
    """
    The server's HTTP face over its real protocol core and push hub, on
    C{clock}, as L{directpush.tap.buildService} wires them.
    """
    backend = MemoryBackend(clock)
    hub = PushHub(clock, backend)
    services = Services(backend, MemoryStateStore(), clock, hub=hub, minHeartbeat=60, maxHeartbeat=3540)
    dispatcher = makeDispatcher(services)
    auth.writePasswd(passwdPath, {USER: "{PLAIN}" + PASSWORD})
    checker = auth.PasswdChecker(auth.PasswdFile(passwdPath), lambda f: defer.succeed(f()), clock)
    portal = Portal(auth.Realm(web.makeUserResource(dispatcher, 1 << 20)), [checker])
    return web.buildSite(portal, clock), backend


class SeedExampleTests(SynchronousTestCase):
    def test_heartbeatDance(self) -> None:
        """
        Start at 15 minutes; the carrier cuts idle connections after 13;
        the device falls back to 8, grows to 12, gets a change 4 minutes
        into a 12-minute Ping, syncs, Pings again at 12, gets a clean
        expiry at 12, tries 16, is dropped, and settles on 12.
        """
        clock = MemoryReactorClock()
        network = Network(clock)
        site, backend = buildServer(clock, FilePath(self.mktemp()))
        relay = CarrierRelay(_Endpoint(network, site), clock, 13 * MIN)
        agent = Agent.usingEndpointFactory(
            clock, _EndpointFactory(_Endpoint(network, relay)), HTTPConnectionPool(clock, persistent=False)
        )
        transport = HTTPTransport(agent, b"http://mail.example.org/Microsoft-Server-ActiveSync", USER, PASSWORD)
        events: List[Tuple[float, dict]] = []
        device = Device(
            transport.request,
            clock,
            Heartbeat.create(initial=15 * MIN, minimum=8 * MIN, maximum=30 * MIN, step=4 * MIN),
            lambda event: events.append((clock.seconds(), event)),
            user=USER,
        )
        running = defer.Deferred.fromCoroutine(device.run())
        network.flush()
        self.assertEqual(events, [(0, {"event": "ping", "heartbeat": 900})])

        # 15 minutes: cut at 13, no answer by 15 min + 30 s: dropped.
        network.run(15 * MIN + 30)
        # 8 minutes: a clean expiry (the server answers 5 s early).
        network.run(8 * MIN - 5)
        # 4 minutes into the 12-minute Ping, mail arrives.
        network.run(4 * MIN)
        inbox = device.watchedFolders()[0]
        mailbox = self.successResultOf(backend.mailbox(USER))
        self.successResultOf(mailbox.append(inbox, MESSAGE))
        network.flush()
        # A new 12-minute Ping, which ends cleanly.
        network.run(12 * MIN - 5)
        # 16 minutes: cut at 13, dropped at 16 min + 30 s; settled on 12.
        network.run(16 * MIN + 30)
        # Stable at 12.
        network.run(12 * MIN - 5)

        t1 = 15 * MIN + 30
        t2 = t1 + 8 * MIN - 5
        t3 = t2 + 4 * MIN
        t4 = t3 + 12 * MIN - 5
        t5 = t4 + 16 * MIN + 30
        t6 = t5 + 12 * MIN - 5
        self.assertEqual(
            events,
            [
                (0, {"event": "ping", "heartbeat": 900}),
                (t1, {"event": "network-drop", "heartbeat": 900}),
                (t1, {"event": "ping", "heartbeat": 480}),
                (t2, {"event": "expired", "heartbeat": 480}),
                (t2, {"event": "ping", "heartbeat": 720}),
                (t3, {"event": "changes", "folders": ["Inbox"]}),
                (t3, {"event": "new-mail", "folder": "Inbox", "subject": "Pushed to you"}),
                (t3, {"event": "ping", "heartbeat": 720}),
                (t4, {"event": "expired", "heartbeat": 720}),
                (t4, {"event": "ping", "heartbeat": 960}),
                (t5, {"event": "network-drop", "heartbeat": 960}),
                (t5, {"event": "heartbeat-settled", "seconds": 720}),
                (t5, {"event": "ping", "heartbeat": 720}),
                (t6, {"event": "expired", "heartbeat": 720}),
                (t6, {"event": "ping", "heartbeat": 720}),
            ],
        )
        self.assertEqual(relay.cuts, 2)
        device.stop()
        network.flush()
        self.successResultOf(running)
        relay.abortAll()
        network.run(120)
        self.assertEqual(clock.getDelayedCalls(), [])
