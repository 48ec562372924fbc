# -*- test-case-name: tests.test_web -*-
"""
The HTTP adapter: twisted.web resources that carry requests to the protocol
core (L{directpush.protocol.dispatch}) and its answers back. HTTP matters
only: authentication, body limits, content codings, long requests.
"""

from __future__ import annotations

import binascii
import gzip
import zlib
from functools import partial
from typing import Any, Callable, Optional

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import LoginFailed, Unauthorized
from twisted.cred.portal import Portal
from twisted.internet import tcp
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted.web.http_headers import Headers
from twisted.web.resource import IResource, NoResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from .auth import CannotCheck
from .protocol.dispatch import Dispatcher, Pending, Response, errorResponse
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
            self._dispatcher.begin(query, partial(_header, request), self._user, body)
        )
        # A client that hangs up cancels whatever the command waits for
        # (a Ping's wait above all), so nothing is held for it. Plain
        # functions and argument tuples, not closures: thousands of these
        # wait at once, and each closure cell and Deferred is kept alive
        # for the whole wait.
        _follow(d, request, self._user)
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


def _cancel(reason: Failure, d: "Deferred[Response]") -> None:
    d.cancel()


def _follow(d: "Deferred[Response | Pending]", request: Request, user: str) -> None:
    """
    Write what C{d} answers, unless the client left; cancel C{d} if the
    client leaves first.
    """
    if isinstance(request, LimitedRequest):
        request.cancelOnLoss = d
    else:
        request.notifyFinish().addErrback(_cancel, d)
    d.addCallbacks(_answer, _failed, callbackArgs=(request, user), errbackArgs=(request, user))


def _answer(response: "Response | Pending", request: Request, user: str) -> None:
    if isinstance(request, LimitedRequest):
        request.cancelOnLoss = None
    if isinstance(response, Pending):
        if request.finished or request.channel is None:
            response.deferred.cancel()
            response.deferred.addErrback(lambda f: f.trap(CancelledError))
        else:
            _shed(request)
            _follow(response.deferred, request, user)
        return
    if not request.finished and request.channel is not None:
        _write(request, response)


def _failed(failure: Failure, request: Request, user: str) -> None:
    if isinstance(request, LimitedRequest):
        request.cancelOnLoss = None
    if failure.check(CancelledError):
        return
    log.failure("request from {user} failed", failure=failure, user=user)
    if not request.finished and request.channel is not None:
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


#: The request headers a waiting request keeps: what its answer
#: (L{_acceptsGzip}) and the access log read.
_KEPT_HEADERS = (b"accept-encoding", b"user-agent", b"referer", b"x-forwarded-for")


def _shed(request: Request) -> None:
    """
    Let a request that will wait long (thousands at once, for up to an
    hour) drop what was parsed from it and is read no more: the query
    arguments, the body, and the request headers but those its answer and
    the access log read. Twisted reads the others (persistence, cookies,
    C{Expect}) only while the request arrives.
    """
    request.args = {}
    if request.content is not None:
        request.content.close()
    kept = Headers()
    for name in _KEPT_HEADERS:
        values = request.requestHeaders.getRawHeaders(name)
        if values is not None:
            kept.setRawHeaders(name, values)
    request.requestHeaders = kept


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


class BasicGuard(Resource):
    """
    HTTP Basic authentication in front of the avatar resources of
    C{portal}: what L{twisted.web.guard.HTTPAuthSessionWrapper} does for
    one scheme, without the wrapper class, L{Deferred} and logout callback
    it keeps per request until the answer (a waiting Ping lives for
    minutes, thousands at once). Our realm's logout does nothing, so it is
    not called.
    """

    isLeaf = True

    def __init__(self, portal: Portal, realmName: bytes) -> None:
        super().__init__()
        self._portal = portal
        self._challenge = b'basic realm="' + realmName + b'"'

    def render(self, request: Request) -> object:
        credentials = _basicCredentials(request.getHeader(b"authorization"))
        if credentials is None:
            return self._unauthorized(request)
        d = self._portal.login(credentials, None, IResource)
        d.addCallbacks(self._loggedIn, self._loginFailed, callbackArgs=(request,), errbackArgs=(request,))
        return NOT_DONE_YET

    def _loggedIn(self, result: Any, request: Request) -> None:
        if request.finished or request.channel is None:
            return
        _, avatar, _ = result
        request.render(avatar)

    def _loginFailed(self, failure: Failure, request: Request) -> None:
        if request.finished or request.channel is None:
            return
        if failure.check(CannotCheck):
            # Not 401: that would make phones ask their users for the
            # password, when it only could not be checked just now.
            body = _Busy().render(request)
        elif failure.check(Unauthorized, LoginFailed):
            body = self._unauthorized(request)
        else:
            log.failure("authenticating a request failed", failure=failure)
            request.setResponseCode(500)
            body = b"Internal Error"
        request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
        request.write(body)
        request.finish()

    def _unauthorized(self, request: Request) -> bytes:
        request.setResponseCode(401)
        request.setHeader(b"WWW-Authenticate", self._challenge)
        return b"Unauthorized"


def _basicCredentials(header: Optional[bytes]) -> Optional[UsernamePassword]:
    """
    The user name and password of a C{Basic} I{Authorization} header, or
    L{None} for a missing, other or malformed one.
    """
    if not header:
        return None
    scheme, _, blob = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = binascii.a2b_base64(blob.strip() + b"===")
    except binascii.Error:
        return None
    name, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return UsernamePassword(name, password)


class LimitedRequest(Request):
    """
    A request whose body may not exceed C{maxBody} bytes: a larger declared
    length, or more bytes than that, gets 413 at once and the connection is
    closed, before anything is buffered or anyone is authenticated.
    """

    maxBody = DEFAULT_MAX_BODY

    # Our own state lives in slots, not in the instance dict. A Request's
    # dict stays a small shared-key dict (about 250 bytes) only while every
    # request adds the same keys in the same order; ours add these on some
    # paths only, and one divergent insert turns it into a private 1.5 KB
    # table, kept as long as a Ping waits.
    __slots__ = ("cancelOnLoss", "_received", "_rejected")

    #: What to cancel if the client goes away before the answer: the
    #: command in progress. Cheaper than a notifyFinish() Deferred and
    #: its callbacks, kept for every waiting request.
    cancelOnLoss: "Optional[Deferred[Any]]"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.cancelOnLoss = None
        self._received = 0
        self._rejected = False
        super().__init__(*args, **kwargs)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        d, self.cancelOnLoss = self.cancelOnLoss, None
        if d is not None:
            d.cancel()

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


class _SlimServer(tcp.Server):
    """
    An accepted TCP connection whose write-buffer fields live in slots.

    Twisted sets C{dataBuffer} and C{offset} on a transport the first time
    it writes; on a connection that has answered before (every phone's,
    by the time it waits on a Ping) that insert turns the instance dict,
    shared-key while every connection adds the same keys in the same
    order, into a private 830-byte table whenever some earlier connection
    (a probe that connected and closed) added a different key first.
    """

    __slots__ = ("dataBuffer", "offset")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.dataBuffer = b""
        self.offset = 0
        super().__init__(*args, **kwargs)


def slimTransports(port: object) -> None:
    """
    Have a listening TCP (or TLS over TCP) port accept connections as
    L{_SlimServer}; other kinds of port are left as they are.
    """
    if type(port) is tcp.Port and port.transport is tcp.Server:
        port.transport = _SlimServer  # type: ignore[attr-defined]


class _Busy(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(503)
        request.setHeader(b"Retry-After", b"5")
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"the password cannot be checked just now; retry shortly\n"


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
    site = Site(RootResource(BasicGuard(portal, realmName)), reactor=reactor)
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
