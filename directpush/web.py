# -*- test-case-name: tests.test_web -*-
"""
The HTTP adapter: twisted.web resources that carry requests to the protocol
core (L{directpush.protocol.dispatch}) and its answers back. HTTP matters
only: authentication, body limits, content codings, long requests.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Callable, Optional

from twisted.cred.portal import Portal
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.guard import BasicCredentialFactory, HTTPAuthSessionWrapper

from twisted.web.resource import IResource, NoResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from .protocol.dispatch import Dispatcher, Response, errorResponse
from .auth import ChecksBusy
from .throttle import ConnectionGuard, Throttle

ENDPOINT = b"microsoft-server-activesync"
SERVER_VERSION = b"14.1"
DEFAULT_MAX_BODY = 32 * 1024 * 1024
#: Compressing smaller answers costs more than it saves.
GZIP_MINIMUM = 1024

log = Logger()


def _header(request: Request, name: str) -> Optional[str]:
    # Asked by a bytes name, twisted.web returns the raw bytes; by a str
    # name it decodes them as UTF-8 and raises on anything else, which a
    # client controls.
    value = request.getHeader(name.encode("ascii"))
    if value is None:
        return None
    return value.decode("latin-1")


class ActiveSyncResource(Resource):
    """
    C{/Microsoft-Server-ActiveSync} for one authenticated user: OPTIONS and
    POST. The user comes from twisted.cred, never from the query.
    """

    isLeaf = True

    def __init__(self, user: str, dispatcher: "Dispatcher | Throttle", maxBody: int) -> None:
        super().__init__()
        self._user = user
        self._dispatcher = dispatcher
        self._maxBody = maxBody

    def render_OPTIONS(self, request: Request) -> bytes:
        request.setHeader(b"Allow", b"OPTIONS,POST")
        request.setHeader(b"Public", b"OPTIONS,POST")
        for name, value in self._dispatcher.optionsHeaders():
            request.setHeader(name.encode("ascii"), value.encode("ascii"))
        request.setHeader(b"Cache-Control", b"private")
        request.setHeader(b"MS-Server-ActiveSync", SERVER_VERSION)
        request.setHeader(b"Content-Length", b"0")
        return b""

    def render_POST(self, request: Request) -> object:
        body = self._readBody(request)
        if isinstance(body, Response):
            _write(request, body)
            return NOT_DONE_YET
        query = request.uri.partition(b"?")[2]
        d = Deferred.fromCoroutine(
            self._dispatcher.dispatch(
                query, lambda name: _header(request, name), self._user, body
            )
        )
        finished = []
        # A client that hangs up cancels whatever the command waits for
        # (a Ping's wait above all), so nothing is held for it.
        request.notifyFinish().addBoth(finished.append)
        request.notifyFinish().addErrback(lambda _: d.cancel())

        def answer(response: Response) -> None:
            if not finished:
                _write(request, response)

        def failed(failure: Failure) -> None:
            if failure.check(CancelledError):
                return
            log.failure("request from {user} failed", failure=failure, user=self._user)
            if not finished:
                # 503, not 500: iOS answers repeated 500s with a full resync.
                _write(
                    request,
                    Response(
                        503,
                        b"temporary server error\n",
                        "text/plain; charset=utf-8",
                        (("Retry-After", "60"),),
                    ),
                )

        d.addCallbacks(answer, failed)
        return NOT_DONE_YET

    def _readBody(self, request: Request) -> "bytes | Response":
        request.content.seek(0)
        raw = request.content.read()
        coding = (_header(request, "Content-Encoding") or "identity").strip().lower()
        if coding in ("identity", ""):
            return raw
        if coding not in ("gzip", "x-gzip"):
            log.warn("unsupported Content-Encoding {coding!r} from {user}", coding=coding[:32], user=self._user)
            return errorResponse(415, "only gzip request bodies are accepted")
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            # Inflate at most one byte past the limit: a small bomb never
            # grows in memory beyond it.
            body = inflater.decompress(raw, self._maxBody + 1)
        except zlib.error:
            log.warn("corrupt gzip body from {user}", user=self._user)
            return errorResponse(400, "corrupt gzip body")
        if len(body) > self._maxBody or inflater.unconsumed_tail:
            log.warn("gzip body from {user} inflates past the limit", user=self._user)
            return errorResponse(413, f"request body larger than {self._maxBody} bytes")
        if not inflater.eof:
            log.warn("truncated gzip body from {user}", user=self._user)
            return errorResponse(400, "truncated gzip body")
        return body


def _write(request: Request, response: Response) -> None:
    request.setResponseCode(response.code)
    request.setHeader(b"MS-Server-ActiveSync", SERVER_VERSION)
    request.setHeader(b"Cache-Control", b"private")
    for name, value in response.headers:
        request.setHeader(name.encode("ascii"), value.encode("ascii"))
    body = response.body
    if response.contentType is not None:
        request.setHeader(b"Content-Type", response.contentType.encode("ascii"))
    if len(body) >= GZIP_MINIMUM and _acceptsGzip(request):
        # Level 1: on the reactor thread speed matters more than the last
        # few percent of size (level 6 cost four times the CPU here).
        packed = gzip.compress(body, compresslevel=1, mtime=0)
        if len(packed) < len(body):
            body = packed
            request.setHeader(b"Content-Encoding", b"gzip")
            request.setHeader(b"Vary", b"Accept-Encoding")
    # Always a Content-Length: older clients do not read chunked answers.
    request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
    request.write(body)
    request.finish()


def _acceptsGzip(request: Request) -> bool:
    accepted = _header(request, "Accept-Encoding") or ""
    for item in accepted.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


class RootResource(Resource):
    """
    The site root: only C{/Microsoft-Server-ActiveSync} (any letter case,
    as deployed servers accept) leads anywhere.
    """

    def __init__(self, activeSync: IResource) -> None:
        super().__init__()
        self._activeSync = activeSync

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path.lower() == ENDPOINT:
            return self._activeSync
        return NoResource()

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"directpush: Exchange ActiveSync lives at /Microsoft-Server-ActiveSync\n"


class LimitedRequest(Request):
    """
    A request whose body may not exceed C{maxBody} bytes: a larger declared
    length, or more bytes than that, gets 413 at once and the connection is
    closed, before anything is buffered or anyone is authenticated.
    """

    maxBody = DEFAULT_MAX_BODY
    _rejected = False
    _received = 0

    def gotLength(self, length: Optional[int]) -> None:
        if length is not None and length > self.maxBody:
            self._reject(length)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._rejected:
            return
        self._received += len(data)
        if self._received > self.maxBody:
            self._reject(self._received)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._rejected:
            return
        super().requestReceived(command, path, version)

    def _reject(self, size: int) -> None:
        self._rejected = True
        log.warn(
            "request body of {size} bytes from {peer} refused (limit {limit})",
            size=size,
            peer=str(self.channel.transport.getPeer()) if self.channel else "?",
            limit=self.maxBody,
        )
        if self.channel is not None:
            self.channel.transport.write(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n"
            )
            self.channel.loseConnection()


class _AuthWrapper(HTTPAuthSessionWrapper):
    """
    Basic authentication that answers 503 with Retry-After, not 401, when
    the password could not be checked for lack of capacity.
    """

    def _loginFailed(self, result: Failure) -> IResource:
        if result.check(ChecksBusy):
            return _Busy()
        return super()._loginFailed(result)  # type: ignore[no-any-return]


class _Busy(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(503)
        request.setHeader(b"Retry-After", b"5")
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"too many logins at once; retry shortly\n"


def buildSite(
    portal: Portal,
    reactor: IReactorTime,
    maxBody: int = DEFAULT_MAX_BODY,
    realmName: bytes = b"directpush",
    guard: Optional[ConnectionGuard] = None,
) -> Site:
    """
    The whole HTTP face: root, Basic authentication through C{portal}, and
    the body limit.

    @param guard: if given, deadlines for receiving requests and the cap on
        connections per peer (L{directpush.throttle}).
    """
    guarded = _AuthWrapper(portal, [BasicCredentialFactory(realmName)])
    site = Site(RootResource(guarded), reactor=reactor)
    site.displayTracebacks = False
    site.requestFactory = _requestFactory(maxBody)
    if guard is not None:
        site.protocol = guard.channel  # type: ignore[assignment]
    return site


def _requestFactory(maxBody: int) -> Callable[..., LimitedRequest]:
    return type("LimitedRequest", (LimitedRequest,), {"maxBody": maxBody})


def makeUserResource(dispatcher: "Dispatcher | Throttle", maxBody: int) -> Callable[[str], IResource]:
    """
    What the realm hands each authenticated user.
    """
    return lambda user: ActiveSyncResource(user, dispatcher, maxBody)
