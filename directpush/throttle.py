# -*- test-case-name: tests.test_throttle -*-
"""
Limits on what one client may cost the server: request rates per device
and per user, requests in progress per user, connections per peer
address, and deadlines for receiving a request (slow clients that trickle
headers or bodies byte by byte).

Everything here answers a misbehaving client itself (503 with
C{Retry-After}, or 408 and a closed connection) and logs it; other users
keep being served.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple, TypeVar

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.http import HTTPChannel

from .protocol.dispatch import Dispatcher, Pending, Response, Settling
from .protocol.request import BadRequest, parseRequest

log = Logger()

T = TypeVar("T")


@attrs.frozen
class Limits:
    """
    The limits, all configurable through C{twistd directpush} options.

    @ivar deviceRate: requests per second one device may keep up.
    @ivar deviceBurst: requests one device may make at once after a quiet
        spell (a first Sync of many folders).
    @ivar userRate: requests per second one user's devices together may
        keep up.
    @ivar userBurst: the user's burst.
    @ivar userConcurrent: requests of one user in progress at once, waiting
        Pings and hanging Syncs included.
    @ivar peerConnections: open connections from one peer address (0: no
        limit; behind a reverse proxy every client has its address).
    @ivar headerTimeout: seconds from a request's first byte until its
        headers are complete.
    @ivar bodyTimeout: seconds a request body may stall; each
        C{minBodyRate} bytes received add a second.
    @ivar minBodyRate: bytes per second a body must keep up.
    """

    deviceRate: float = 2.0
    deviceBurst: int = 120
    userRate: float = 10.0
    userBurst: int = 600
    userConcurrent: int = 60
    peerConnections: int = 1000
    headerTimeout: float = 30.0
    bodyTimeout: float = 30.0
    minBodyRate: int = 500


#: Limits that never get in the way (benchmarks, tests of other things).
UNLIMITED = Limits(
    deviceRate=math.inf,
    deviceBurst=2**31,
    userRate=math.inf,
    userBurst=2**31,
    userConcurrent=2**31,
    peerConnections=0,
    headerTimeout=3600.0,
    bodyTimeout=3600.0,
    minBodyRate=1,
)


@attrs.define
class _Bucket:
    tokens: float
    stamp: float


@attrs.define
class TokenBuckets:
    """
    One token bucket per key: C{burst} tokens at most, refilled at C{rate}
    per second; a request takes one. Full buckets are forgotten, so memory
    follows the keys active in the last C{burst / rate} seconds.
    """

    rate: float
    burst: int
    clock: IReactorTime
    _buckets: Dict[Tuple[str, ...], _Bucket] = attrs.field(factory=dict)
    _lastSweep: float = 0.0

    def take(self, key: Tuple[str, ...]) -> float:
        """
        Take a token for C{key}.

        @return: 0 when granted, else the seconds until a token is back.
        """
        if math.isinf(self.rate):
            return 0.0
        now = self.clock.seconds()
        self._sweep(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _sweep(self, now: float) -> None:
        full = self.burst / self.rate if self.rate > 0 else math.inf
        if now - self._lastSweep < max(full, 60.0):
            return
        self._lastSweep = now
        for key in [k for k, b in self._buckets.items() if b.tokens + (now - b.stamp) * self.rate >= self.burst]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


def busy(retryAfter: float, reason: str) -> Response:
    """
    The 503 a throttled client gets: EAS clients honour C{Retry-After}.
    """
    seconds = max(1, math.ceil(retryAfter))
    return Response(
        503,
        f"too many requests: {reason}; retry after {seconds} s\n".encode("utf-8"),
        "text/plain; charset=utf-8",
        (("Retry-After", str(seconds)),),
    )


@attrs.define
class Throttle(Settling):
    """
    A L{Dispatcher} in front of the real one that refuses, with 503 and
    C{Retry-After}, what goes past the per-device and per-user limits.
    Requests in progress are counted until they finish or are cancelled.
    """

    dispatcher: Dispatcher
    limits: Limits
    clock: IReactorTime
    _devices: TokenBuckets = attrs.field(init=False)
    _users: TokenBuckets = attrs.field(init=False)
    _inProgress: Dict[str, int] = attrs.field(factory=dict)
    refused: int = 0
    _onFinished: Callable[..., Any] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._onFinished = self._finished
        self._devices = TokenBuckets(self.limits.deviceRate, self.limits.deviceBurst, self.clock)
        self._users = TokenBuckets(self.limits.userRate, self.limits.userBurst, self.clock)

    def optionsHeaders(self) -> Tuple[Tuple[str, str], ...]:
        return self.dispatcher.optionsHeaders()

    def inProgress(self, user: str) -> int:
        return self._inProgress.get(user, 0)

    async def begin(
        self,
        query: bytes,
        header: Callable[[str], Optional[str]],
        user: str,
        body: bytes,
    ) -> "Response | Pending":
        """
        L{Dispatcher.begin} behind the limits; a L{Pending} answer counts
        as in progress until it fires or is cancelled.
        """
        refusal = self._admit(query, header, user)
        if refusal is not None:
            self.refused += 1
            return refusal
        self._inProgress[user] = self._inProgress.get(user, 0) + 1
        try:
            answer = await self.dispatcher.begin(query, header, user, body)
        except BaseException:
            self._finished(None, user)
            raise
        if isinstance(answer, Pending):
            # Not addBoth: it makes two dicts and two bound methods for
            # each of thousands of waiting Pings.
            answer.deferred.addCallbacks(
                self._onFinished, self._onFinished, callbackArgs=(user,), errbackArgs=(user,)
            )
        else:
            self._finished(None, user)
        return answer

    def _finished(self, result: T, user: str) -> T:
        left = self._inProgress[user] - 1
        if left:
            self._inProgress[user] = left
        else:
            del self._inProgress[user]
        return result

    def _admit(self, query: bytes, header: Callable[[str], Optional[str]], user: str) -> Optional[Response]:
        if self._inProgress.get(user, 0) >= self.limits.userConcurrent:
            log.warn(
                "{user} has {count} requests in progress; refused another (limit {limit})",
                user=user,
                count=self._inProgress[user],
                limit=self.limits.userConcurrent,
            )
            return busy(10, "too many requests in progress")
        # Every request counts against the user, malformed ones too.
        wait = self._users.take((user,))
        if wait:
            log.warn("{user} over the request rate; retry in {wait:.0f} s", user=user, wait=wait)
            return busy(wait, "user request rate")
        try:
            device = parseRequest(query, header, user).deviceId
        except BadRequest:
            return None  # the dispatcher answers it with 400 and logs why
        wait = self._devices.take((user, device))
        if wait:
            log.warn(
                "{user} device {device} over the request rate; retry in {wait:.0f} s",
                user=user,
                device=device,
                wait=wait,
            )
            return busy(wait, "device request rate")
        return None


class GuardedChannel(HTTPChannel):
    """
    An HTTP channel with deadlines for receiving each request and a cap on
    connections per peer address. twisted.web's idle timeout alone restarts
    with every byte, so a client sending one byte every few seconds would
    hold its connection forever.

    @ivar guard: the shared L{ConnectionGuard}.
    """

    # Slots rather than dict entries, for the reason given on
    # L{directpush.web.LimitedRequest}: a channel lives as long as its
    # waiting Ping.
    __slots__ = ("guard", "_deadline", "_phase", "_counted", "_peer")

    guard: "ConnectionGuard"
    _deadline: Optional[IDelayedCall]

    def __init__(self, guard: "ConnectionGuard") -> None:
        self.guard = guard
        self._deadline = None
        self._phase = "headers"
        self._counted = False
        self._peer = ""
        super().__init__()

    def connectionMade(self) -> None:
        super().connectionMade()
        peer = self.transport.getPeer()
        self._peer = getattr(peer, "host", str(peer))
        if not self.guard.admit(self._peer):
            log.warn(
                "connection from {peer} refused: {limit} connections from it already open",
                peer=self._peer,
                limit=self.guard.limits.peerConnections,
            )
            self.transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 30\r\n"
                b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            self.transport.loseConnection()
            return
        self._counted = True

    def dataReceived(self, data: bytes) -> None:
        # The first byte of a request that is not yet handled starts the
        # clock for its headers.
        if self._deadline is None and not self._handlingRequest and data:
            self._phase = "headers"
            self._deadline = self.callLater(self.guard.limits.headerTimeout, self._expired)
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        if self._deadline is not None and self._deadline.active():
            self._phase = "body"
            self._deadline.reset(self.guard.limits.bodyTimeout)

    def rawDataReceived(self, data: bytes) -> None:
        deadline = self._deadline
        if deadline is not None and deadline.active() and self._phase == "body":
            limits = self.guard.limits
            now = self.guard.clock.seconds()
            # A second more per minBodyRate bytes, but never more than a
            # full bodyTimeout ahead: a stall is always cut.
            later = min(deadline.getTime() + len(data) / limits.minBodyRate, now + limits.bodyTimeout)
            deadline.reset(max(0.0, later - now))
        super().rawDataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        # twisted.web drops a connection whose request or header line
        # passes MAX_LENGTH without a word; say why.
        log.warn("{peer} sent a request or header line over {limit} bytes; refused", peer=self._peer, limit=self.MAX_LENGTH)
        self._cancelDeadline()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        self.loseConnection()

    def allContentReceived(self) -> None:
        self._cancelDeadline()
        super().allContentReceived()

    def _cancelDeadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        self.guard.timedOut += 1
        log.warn(
            "{peer} did not send the request {phase} in time; connection closed",
            peer=self._peer,
            phase=self._phase,
        )
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        # loseConnection, then abort if the client does not read either.
        self.timeoutConnection()

    def connectionLost(self, reason: object) -> None:
        self._cancelDeadline()
        if self._counted:
            self._counted = False
            self.guard.release(self._peer)
        super().connectionLost(reason)


@attrs.define
class ConnectionGuard:
    """
    Counts open connections per peer address and makes L{GuardedChannel}s.
    """

    limits: Limits
    clock: IReactorTime
    _open: Dict[str, int] = attrs.field(factory=dict)
    timedOut: int = 0

    def admit(self, peer: str) -> bool:
        count = self._open.get(peer, 0)
        if self.limits.peerConnections and count >= self.limits.peerConnections:
            return False
        self._open[peer] = count + 1
        return True

    def release(self, peer: str) -> None:
        left = self._open.get(peer, 0) - 1
        if left > 0:
            self._open[peer] = left
        else:
            self._open.pop(peer, None)

    def connections(self, peer: str) -> int:
        return self._open.get(peer, 0)

    def channel(self) -> GuardedChannel:
        return GuardedChannel(self)
