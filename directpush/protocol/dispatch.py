# -*- test-case-name: tests.test_dispatch -*-
"""
From an authenticated HTTP request to a response value: parse the query,
decode the body, pick the command handler. Every refusal is decided here
(HTTP 400/501 or a protocol status), so that the web adapter only carries
bytes.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Mapping, Optional, Tuple

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .. import wbxml
from .request import COMMANDS, VERSIONS, BadRequest, EASRequest, parseRequest

WBXML_TYPE = "application/vnd.ms-sync.wbxml"

log = Logger()


@attrs.frozen
class Response:
    """
    What to answer: an HTTP status, a body and extra headers.
    """

    code: int = 200
    body: bytes = b""
    contentType: Optional[str] = None
    headers: Tuple[Tuple[str, str], ...] = ()


def wbxmlResponse(tree: wbxml.Element) -> Response:
    """
    A 200 answer carrying C{tree} as WBXML.
    """
    return Response(200, wbxml.encode(tree), WBXML_TYPE)


def errorResponse(code: int, message: str) -> Response:
    """
    An HTTP error with a one-line plain-text explanation.
    """
    return Response(code, message.encode("utf-8") + b"\n", "text/plain; charset=utf-8")


@attrs.frozen
class Pending:
    """
    An answer that comes later. A command that waits long (a Ping) hands
    this back instead of awaiting in its coroutine: what then waits is a
    L{Deferred} and its callbacks, not the coroutine frames of every layer
    and the machinery that drives them, for each of thousands of devices.
    Cancelling C{deferred} ends the wait.
    """

    deferred: "Deferred[Response]"


async def settled(answer: "Awaitable[Response | Pending]") -> Response:
    """
    The final answer of a C{begin}: a L{Pending} one waited for.
    """
    begun = await answer
    if isinstance(begun, Pending):
        return await begun.deferred
    return begun


class Settling:
    """
    C{dispatch} for a class that gives C{begin}: the final answer, a
    L{Pending} one waited for.
    """

    __slots__ = ()

    async def begin(
        self,
        query: bytes,
        header: Callable[[str], Optional[str]],
        user: str,
        body: bytes,
    ) -> "Response | Pending":
        raise NotImplementedError()

    async def dispatch(
        self,
        query: bytes,
        header: Callable[[str], Optional[str]],
        user: str,
        body: bytes,
    ) -> Response:
        """
        Answer one POST from the authenticated C{user}.

        @param query: the raw query string.
        @param header: looks up a request header (C{None} if absent).
        @param body: the request body, already decompressed.
        """
        return await settled(self.begin(query, header, user, body))


Handler = Callable[[EASRequest, Optional[wbxml.Element], bytes], "Awaitable[Response | Pending]"]
"""
A command handler: the request, its decoded WBXML document (L{None} for an
empty or non-WBXML body) and the raw body (for C{message/rfc822} bodies).
It answers with a L{Response}, or a L{Pending} one.
"""


@attrs.define
class Dispatcher(Settling):
    """
    Routes requests to the command handlers registered for them.

    @ivar handlers: command name -> handler; only these commands are
        advertised in OPTIONS.
    """

    handlers: Mapping[str, Handler] = attrs.field(factory=dict)

    @property
    def versions(self) -> Tuple[str, ...]:
        return VERSIONS

    @property
    def commands(self) -> Tuple[str, ...]:
        """
        The implemented commands, in the order MS-ASCMD lists them.
        """
        return tuple(c for c in COMMANDS if c in self.handlers)

    def optionsHeaders(self) -> Tuple[Tuple[str, str], ...]:
        return (
            ("MS-ASProtocolVersions", ",".join(self.versions)),
            ("MS-ASProtocolCommands", ",".join(self.commands)),
        )

    async def begin(
        self,
        query: bytes,
        header: Callable[[str], Optional[str]],
        user: str,
        body: bytes,
    ) -> "Response | Pending":
        """
        Like L{dispatch}, but a command that waits answers with a
        L{Pending} at once: what the web adapter uses.
        """
        try:
            request = parseRequest(query, header, user)
        except BadRequest as e:
            log.warn("bad request from {user}: {reason}", user=user, reason=str(e))
            return errorResponse(400, str(e))
        handler = self.handlers.get(request.command)
        if handler is None:
            log.info(
                "{user} device {device} asked for {command}, not implemented",
                user=user,
                device=request.deviceId,
                command=request.command,
            )
            return errorResponse(501, f"{request.command} is not implemented")
        document = None
        contentType = (header("Content-Type") or "").split(";")[0].strip().lower()
        if body and contentType == WBXML_TYPE:
            try:
                document = wbxml.decode(body)
            except wbxml.DecodeError as e:
                log.warn(
                    "undecodable {command} body from {user} device {device}: {reason}",
                    command=request.command,
                    user=user,
                    device=request.deviceId,
                    reason=str(e),
                )
                return errorResponse(400, f"malformed WBXML: {e}")
        _auditUser(request)
        response = await handler(request, document, body)
        if not isinstance(response, Pending):
            # A waiting Ping's answer is 1 or 2, never a refusal.
            _auditAnswer(request, response)
        return response


#: Refusals are small answers; bigger ones are not decoded to look.
_AUDIT_LIMIT = 16384
#: Status values that are not refusals, per command (Ping 2: changes;
#: MoveItems 3: moved, 1 there means "no such item").
_FINE = {"Ping": frozenset({"1", "2"}), "MoveItems": frozenset({"3"})}


def _auditUser(request: EASRequest) -> None:
    """
    Log a C{User} query parameter naming someone else: it selects nothing
    (the authenticated user does) but is worth an operator's eye.
    """
    named = (request.queryUser or "").strip().lower()
    if not named:
        return
    user = request.user.lower()
    local = user.partition("@")[0]
    if named in (user, local) or named.rpartition("\\")[2] in (user, local):
        return
    log.info(
        "{user} device {device} sent {command} with User={named!r}; ignored, "
        "the authenticated user is served",
        user=request.user,
        device=request.deviceId,
        command=request.command,
        named=named[:64],
    )


def _auditAnswer(request: EASRequest, response: Response) -> None:
    """
    Log a refusal the handler answered with a protocol status (a folder or
    item that does not exist, a stale key ...), so that a device probing
    ids it has not been given leaves a trace.
    """
    if response.code != 200:
        if response.code >= 400:
            log.info(
                "{user} device {device} {command}: HTTP {code}",
                user=request.user,
                device=request.deviceId,
                command=request.command,
                code=response.code,
            )
        return
    if response.contentType != WBXML_TYPE or not response.body or len(response.body) > _AUDIT_LIMIT:
        return
    try:
        tree = wbxml.decode(response.body)
    except wbxml.DecodeError:
        return
    fine = _FINE.get(request.command, frozenset({"1"}))
    found = set()
    stack = [tree]
    while stack:
        element = stack.pop()
        if element.name == "Status":
            found.add(element.text or "")
        stack.extend(element.children)
    statuses = sorted(found - fine)
    if statuses:
        log.info(
            "{user} device {device} {command} refused with status {statuses}",
            user=request.user,
            device=request.deviceId,
            command=request.command,
            statuses=",".join(statuses),
        )


__all__ = [
    "Dispatcher",
    "Handler",
    "Pending",
    "Response",
    "WBXML_TYPE",
    "errorResponse",
    "wbxmlResponse",
]
