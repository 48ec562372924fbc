# -*- test-case-name: tests.test_device_carrier -*-
"""
A carrier / firewall simulator: a TCP relay between device and server that
silently stops relaying a connection once it has been idle for a while.

Neither side gets a FIN or an RST: after the idle timeout, the relay keeps
both sockets open and drops every byte in both directions, which is what
NAT and firewall idle timeouts do to phones. A side that closes after the
cut is not told to the other side either; each side finds out on its own
(the device by its Ping timeout, the server by its idle timeout).
"""

from __future__ import annotations

from typing import List, Optional, Set

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["CarrierRelay", "Link"]


@attrs.define(eq=False)
class Link:
    """
    One relayed connection: the device side, the server side and the idle
    timer.

    @ivar alive: whether bytes still flow; C{False} once the idle timeout
        cut it (or either side closed).
    @ivar cut: whether the idle timeout cut it.
    """

    relay: "CarrierRelay"
    inbound: "_Inbound"
    outbound: Optional["_Outbound"] = None
    pending: List[bytes] = attrs.field(factory=list)
    closed: Set[Protocol] = attrs.field(factory=set)
    alive: bool = True
    cut: bool = False
    _timer: Optional[IDelayedCall] = None

    def touch(self) -> None:
        """
        Bytes moved: restart the idle timer.
        """
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.relay.idleTimeout)
        else:
            self._timer = self.relay.clock.callLater(self.relay.idleTimeout, self._cutIdle)

    def _cutIdle(self) -> None:
        self._timer = None
        self.alive = False
        self.cut = True
        self.pending.clear()
        self.relay.cuts += 1
        self.relay._log.info("carrier: idle for {timeout}s, silently cut a connection", timeout=self.relay.idleTimeout)

    def stopTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def fromDevice(self, data: bytes) -> None:
        if not self.alive:
            return
        self.touch()
        if self.outbound is None or self.outbound.transport is None:
            self.pending.append(data)
        else:
            self.outbound.transport.write(data)

    def fromServer(self, data: bytes) -> None:
        if not self.alive:
            return
        self.touch()
        assert self.inbound.transport is not None
        self.inbound.transport.write(data)

    def connected(self, outbound: "_Outbound") -> None:
        self.outbound = outbound
        if not self.alive:
            # Cut while connecting: hold the new socket open, say nothing.
            return
        assert outbound.transport is not None
        for data in self.pending:
            outbound.transport.write(data)
        self.pending.clear()

    def lost(self, side: Protocol) -> None:
        """
        One side closed. While alive, the close goes through to the other
        side; after a cut, it does not.
        """
        self.closed.add(side)
        if self.inbound in self.closed and (self.outbound is None or self.outbound in self.closed):
            self.relay.links.discard(self)
        if not self.alive:
            return
        self.alive = False
        self.stopTimer()
        other = self.outbound if side is self.inbound else self.inbound
        if other is not None and other.transport is not None:
            other.transport.loseConnection()

    def abort(self) -> None:
        """
        Close both sides at once (when the relay stops).
        """
        self.alive = False
        self.stopTimer()
        for side in (self.inbound, self.outbound):
            if side is not None and side.transport is not None:
                side.transport.abortConnection()


class _Inbound(Protocol):
    link: Link

    def __init__(self, relay: "CarrierRelay") -> None:
        self.relay = relay

    def connectionMade(self) -> None:
        self.link = Link(self.relay, self)
        self.relay.links.add(self.link)
        self.link.touch()
        d = self.relay.target.connect(_OutboundFactory(self.link))
        d.addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        self.relay._log.warn("carrier: cannot reach the server: {error}", error=failure.getErrorMessage())
        self.link.alive = False
        self.link.stopTimer()
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.link.fromDevice(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.link.lost(self)


class _Outbound(Protocol):
    def __init__(self, link: Link) -> None:
        self.link = link

    def connectionMade(self) -> None:
        self.link.connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.link.fromServer(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.link.lost(self)


class _OutboundFactory(Factory):
    def __init__(self, link: Link) -> None:
        self.link = link

    def buildProtocol(self, addr: object) -> _Outbound:
        return _Outbound(self.link)


@attrs.define(eq=False)
class CarrierRelay(Factory):
    """
    The listening side of the relay: each device connection gets its own
    connection to C{target}.

    @ivar target: where the server is.
    @ivar clock: the clock of the idle timers.
    @ivar idleTimeout: seconds without a byte in either direction after
        which a connection is silently cut.
    @ivar links: the connections being relayed (or held after a cut).
    @ivar cuts: how many connections the idle timeout cut so far.
    """

    target: IStreamClientEndpoint
    clock: IReactorTime
    idleTimeout: float
    links: Set[Link] = attrs.field(factory=set)
    cuts: int = 0
    _log = Logger()

    def buildProtocol(self, addr: object) -> _Inbound:
        return _Inbound(self)

    def abortAll(self) -> None:
        """
        Close every connection, cut or not.
        """
        for link in list(self.links):
            link.abort()
        self.links.clear()
