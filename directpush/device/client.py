# -*- test-case-name: tests.test_device_client -*-
"""
The reference EAS device: it sets itself up the way phones do (OPTIONS,
Provision, FolderSync, Sync of the Inbox) and then keeps a Direct Push
Ping going with the adaptive heartbeat of L{directpush.device.heartbeat}.

It reports what happens as events, plain dicts handed to a sink::

    {"event": "ping", "heartbeat": 480}
    {"event": "expired", "heartbeat": 480}
    {"event": "changes", "folders": ["Inbox"]}
    {"event": "new-mail", "folder": "Inbox", "subject": "..."}
    {"event": "network-drop", "heartbeat": 960}
    {"event": "heartbeat-settled", "seconds": 720}
    {"event": "heartbeat-bound", "heartbeat": 1800}
    {"event": "hierarchy-changed"}
    {"event": "error", "message": "..."}

A Ping without an answer by its heartbeat plus L{Device.pingGrace} counts
as dropped by the network: the request is cancelled (its connection
aborted) and the heartbeat machine hears of the drop.
"""

from __future__ import annotations

import base64
from io import BytesIO
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import quote

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.logger import Logger
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from .. import wbxml
from ..wbxml import E
from .heartbeat import Heartbeat, Outcome

__all__ = ["Device", "HTTPTransport", "Reply", "ProtocolError", "Event"]

WBXML_TYPE = "application/vnd.ms-sync.wbxml"
INBOX_TYPE = 2

#: One event, as printed by the push tester.
Event = Dict[str, Any]
#: (HTTP status, content type, body)
Reply = Tuple[int, Optional[str], bytes]

_log = Logger()


class ProtocolError(Exception):
    """
    The server answered something the device cannot go on with.
    """


@attrs.define
class HTTPTransport:
    """
    EAS requests over an L{Agent}.

    @ivar agent: the HTTP client (TLS policy included).
    @ivar base: the URL up to the query, e.g.
        C{b"https://mail.example.org/Microsoft-Server-ActiveSync"}.
    @ivar user: the account name, sent with Basic authentication.
    @ivar password: never logged.
    """

    agent: Any
    base: bytes
    user: str
    password: str = attrs.field(repr=False)

    def request(self, method: bytes, query: str, headers: Dict[str, str], body: bytes) -> "Deferred[Reply]":
        """
        Send one request; the result is cancellable (the connection is
        aborted).
        """
        h = Headers({k.encode(): [v.encode()] for k, v in headers.items()})
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        h.addRawHeader(b"Authorization", f"Basic {token}".encode())
        h.addRawHeader(b"User-Agent", b"directpush-device/1")
        url = self.base + (b"?" + query.encode() if query else b"")
        producer = FileBodyProducer(BytesIO(body), cooperator=_ImmediateCooperator()) if body else None
        d = self.agent.request(method, url, h, producer)

        def read(response: Any) -> "Deferred[Reply]":
            types = response.headers.getRawHeaders(b"Content-Type") or [None]
            contentType = types[0].decode("latin-1").split(";")[0].strip() if types[0] else None
            return readBody(response).addCallback(lambda data: (response.code, contentType, data))

        return d.addCallback(read)


class _ImmediateCooperator:
    """
    Writes a whole in-memory body at once: no cooperator task on the
    global reactor.
    """

    def cooperate(self, iterator: Any) -> Any:
        for _ in iterator:
            pass
        return _DoneTask()


class _DoneTask:
    def whenDone(self) -> "Deferred[Any]":
        return defer.succeed(iter(()))

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def stop(self) -> None:
        pass


@attrs.define
class _Collection:
    key: str = "0"
    items: Dict[str, str] = attrs.field(factory=dict)


@attrs.define
class Device:
    """
    One device on one account.

    @ivar transport: sends requests: C{(method, query, headers, body) ->
        Deferred[Reply]}, cancellable.
    @ivar clock: the clock of Ping timeouts and retries.
    @ivar heartbeat: the adaptive heartbeat machine.
    @ivar emit: where events go.
    @ivar pingGrace: seconds past the heartbeat after which an unanswered
        Ping counts as dropped by the network.
    @ivar retryDelay: seconds to wait after an error before trying again.
    """

    transport: Callable[[bytes, str, Dict[str, str], bytes], "Deferred[Reply]"]
    clock: IReactorTime
    heartbeat: Heartbeat
    emit: Callable[[Event], None]
    user: str = "device"
    deviceId: str = "directpushtester"
    deviceType: str = "DirectPushTester"
    version: str = "14.1"
    pingGrace: float = 30.0
    retryDelay: float = 30.0
    watched: Tuple[int, ...] = (INBOX_TYPE,)
    policyKey: Optional[str] = None
    hierarchyKey: str = "0"
    folders: Dict[str, Tuple[str, int]] = attrs.field(factory=dict)
    collections: Dict[str, _Collection] = attrs.field(factory=dict)
    _stopped: bool = False
    _current: Optional["Deferred[Any]"] = None

    # -- requests ---------------------------------------------------------

    def _query(self, command: str) -> str:
        return (
            f"Cmd={command}&User={quote(self.user)}&DeviceId={quote(self.deviceId)}"
            f"&DeviceType={quote(self.deviceType)}"
        )

    def _headers(self) -> Dict[str, str]:
        headers = {"MS-ASProtocolVersion": self.version, "Content-Type": WBXML_TYPE}
        if self.policyKey is not None:
            headers["X-MS-PolicyKey"] = self.policyKey
        return headers

    def _send(self, command: str, document: wbxml.Element) -> "Deferred[Reply]":
        d = self.transport(b"POST", self._query(command), self._headers(), wbxml.encode(document))
        self._current = d
        return d

    async def call(self, command: str, document: wbxml.Element) -> Optional[wbxml.Element]:
        """
        Send a command and decode the answer; L{None} for an empty 200.

        @raise ProtocolError: for anything but a 200 with WBXML or nothing.
        """
        code, contentType, body = await self._send(command, document)
        if code != 200:
            raise ProtocolError(f"{command}: HTTP {code}")
        if not body:
            return None
        if contentType != WBXML_TYPE:
            raise ProtocolError(f"{command}: content type {contentType}")
        return wbxml.decode(body)

    # -- set-up -----------------------------------------------------------

    async def options(self) -> None:
        """
        Ask which versions and commands the server has.
        """
        code, _, _ = await self.transport(b"OPTIONS", "", {}, b"")
        if code != 200:
            raise ProtocolError(f"OPTIONS: HTTP {code}")

    async def provision(self) -> None:
        """
        The two-phase policy handshake; a server with no policy (Status 2)
        lets the device go on without a key.
        """
        first = await self.call(
            "Provision",
            E(
                "Provision:Provision",
                E("Settings:DeviceInformation", E("Set", E("Model", "directpush-device"), E("OS", "Twisted"))),
                E("Policies", E("Policy", E("PolicyType", "MS-EAS-Provisioning-WBXML"))),
            ),
        )
        policy = first.find("Policies/Policy") if first is not None else None
        if policy is None or policy.findtext("Status") != "1":
            return  # no policy to enforce
        second = await self.call(
            "Provision",
            E(
                "Provision:Provision",
                E(
                    "Policies",
                    E(
                        "Policy",
                        E("PolicyType", "MS-EAS-Provisioning-WBXML"),
                        E("PolicyKey", policy.findtext("PolicyKey") or "0"),
                        E("Status", "1"),
                    ),
                ),
            ),
        )
        key = second.findtext("Policies/Policy/PolicyKey") if second is not None else None
        if not key:
            raise ProtocolError("Provision: no final policy key")
        self.policyKey = key

    async def folderSync(self) -> None:
        """
        Bring the folder list up to date.
        """
        answer = await self.call("FolderSync", E("FolderHierarchy:FolderSync", E("SyncKey", self.hierarchyKey)))
        if answer is None:
            raise ProtocolError("FolderSync: empty answer")
        status = answer.findtext("Status")
        if status == "9":  # the server forgot us: start over
            self.hierarchyKey = "0"
            self.folders.clear()
            self.collections.clear()
            return await self.folderSync()
        if status != "1":
            raise ProtocolError(f"FolderSync: status {status}")
        self.hierarchyKey = answer.findtext("SyncKey") or "0"
        changes = answer.find("Changes")
        for change in changes.children if changes is not None else []:
            serverId = change.findtext("ServerId")
            if change.name in ("Add", "Update"):
                self.folders[serverId] = (change.findtext("DisplayName") or serverId, int(change.findtext("Type") or 0))
            elif change.name == "Delete":
                self.folders.pop(serverId, None)
                self.collections.pop(serverId, None)

    def watchedFolders(self) -> List[str]:
        """
        The ids of the folders the device Pings on.
        """
        return [fid for fid, (_, kind) in self.folders.items() if kind in self.watched]

    async def sync(self, folderId: str, announce: bool = True, windowSize: int = 50) -> None:
        """
        Sync one folder until nothing more is available (key 0 first);
        with C{announce}, each new message is a C{new-mail} event.
        """
        state = self.collections.setdefault(folderId, _Collection())
        for _ in range(10000):
            collection = E("AirSync:Collection", E("SyncKey", state.key), E("CollectionId", folderId))
            if state.key != "0":
                collection.add("GetChanges", "1")
                collection.add("WindowSize", str(windowSize))
                collection.add(
                    "Options",
                    E("AirSyncBase:BodyPreference", E("Type", "1"), E("TruncationSize", "200")),
                )
            initial = state.key == "0"
            answer = await self.call("Sync", E("AirSync:Sync", E("Collections", collection)))
            if answer is None:
                return  # nothing changed
            if answer.findtext("Status") not in (None, "1"):
                raise ProtocolError(f"Sync: status {answer.findtext('Status')}")
            result = next(
                (c for c in answer.findall("Collections/Collection") if c.findtext("CollectionId") == folderId), None
            )
            if result is None:
                return
            status = result.findtext("Status")
            if status == "3":  # bad sync key: start over, quietly
                state.key, state.items = "0", {}
                announce = False
                continue
            if status != "1":
                raise ProtocolError(f"Sync: collection status {status}")
            state.key = result.findtext("SyncKey") or state.key
            commands = result.find("Commands")
            for change in commands.children if commands is not None else []:
                serverId = change.findtext("ServerId")
                if change.name == "Add":
                    subject = change.findtext("ApplicationData/Email:Subject") or ""
                    isNew = serverId not in state.items
                    state.items[serverId] = subject
                    if announce and isNew:
                        self.emit({"event": "new-mail", "folder": self.folders.get(folderId, (folderId, 0))[0], "subject": subject})
                elif change.name in ("Delete", "SoftDelete"):
                    state.items.pop(serverId, None)
            if not initial and result.find("MoreAvailable") is None:
                return
        raise ProtocolError("Sync: too many rounds")

    async def setUp(self) -> None:
        """
        OPTIONS, Provision, FolderSync and a first quiet Sync of each
        watched folder.
        """
        await self.options()
        await self.provision()
        await self.folderSync()
        if not self.watchedFolders():
            raise ProtocolError("no folder to watch")
        for folderId in self.watchedFolders():
            await self.sync(folderId, announce=False)

    # -- push -------------------------------------------------------------

    async def pingOnce(self) -> None:
        """
        One Ping with the current heartbeat, and what follows from its
        answer (or its absence).
        """
        interval = self.heartbeat.current
        self.emit({"event": "ping", "heartbeat": interval})
        document = E(
            "Ping:Ping",
            E("HeartbeatInterval", str(interval)),
            E("Folders", *(E("Folder", E("Id", fid), E("Class", "Email")) for fid in self.watchedFolders())),
        )
        d = self._send("Ping", document)
        timedOut: List[bool] = []
        d.addTimeout(interval + self.pingGrace, self.clock, onTimeoutCancel=lambda result, timeout: timedOut.append(True) or result)
        try:
            code, contentType, body = await d
        except Exception:
            # Cancelled by the timeout: the Agent reports it as
            # ResponseNeverReceived wrapping the CancelledError.
            if timedOut:
                self._dropped(interval)
                return
            raise
        if code != 200:
            raise ProtocolError(f"Ping: HTTP {code}")
        answer = wbxml.decode(body) if body else None
        status = answer.findtext("Status") if answer is not None else None
        if status == "1":
            self.emit({"event": "expired", "heartbeat": interval})
            self._outcome(self.heartbeat.expired())
        elif status == "2":
            self.heartbeat.changed()
            changed = [f.text for f in answer.findall("Folders/Folder")]
            self.emit({"event": "changes", "folders": [self.folders.get(fid, (fid, 0))[0] for fid in changed]})
            for folderId in changed:
                await self.sync(folderId)
        elif status == "5":
            bound = answer.findtext("HeartbeatInterval")
            if not bound or not bound.isdigit():
                raise ProtocolError("Ping: status 5 without a bound")
            self.heartbeat.bounded(int(bound))
            self.emit({"event": "heartbeat-bound", "heartbeat": self.heartbeat.current})
        elif status == "7":
            self.emit({"event": "hierarchy-changed"})
            await self.folderSync()
        elif status == "3":
            pass  # we always send every parameter: just Ping again
        else:
            raise ProtocolError(f"Ping: status {status}")

    def _dropped(self, interval: int) -> None:
        self.emit({"event": "network-drop", "heartbeat": interval})
        self._outcome(self.heartbeat.dropped())

    def _outcome(self, outcome: Outcome) -> None:
        if outcome is Outcome.SETTLED:
            self.emit({"event": "heartbeat-settled", "seconds": self.heartbeat.current})

    async def run(self) -> None:
        """
        Set up, then Ping until L{stop}; errors are events, followed by a
        pause and a new attempt.
        """
        ready = False
        while not self._stopped:
            try:
                if not ready:
                    await self.setUp()
                    ready = True
                await self.pingOnce()
            except defer.CancelledError:
                if self._stopped:
                    return
                raise
            except Exception as e:
                if self._stopped:
                    return
                self.emit({"event": "error", "message": str(e) or e.__class__.__name__})
                _log.debug("device error: {error}", error=e)
                pause: Deferred[None] = Deferred()
                self._current = pause
                call = self.clock.callLater(self.retryDelay, pause.callback, None)
                try:
                    await pause
                except defer.CancelledError:
                    call.cancel()
                    return

    def stop(self) -> None:
        """
        Stop after cancelling whatever request is under way.
        """
        self._stopped = True
        if self._current is not None:
            # A Deferred that is waiting on another one counts as called;
            # cancel() reaches the inner one (and is a no-op when done).
            self._current.cancel()


def makeAgent(
    reactor: Any, caFile: Optional[str] = None, insecure: bool = False, connectTo: Optional[Tuple[str, int]] = None
) -> Agent:
    """
    An L{Agent} that verifies the server's certificate (against C{caFile}
    if given, else the system's authorities), or, with C{insecure}, does
    not.

    @param connectTo: connect there (e.g. the carrier relay) instead of
        the URL's host and port, which still name the server for TLS.
    """
    from twisted.web.client import BrowserLikePolicyForHTTPS, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 2
    pool.cachedConnectionTimeout = 60
    if insecure:
        policy: Any = _InsecurePolicy()
    elif caFile:
        from twisted.internet.ssl import Certificate

        with open(caFile, "rb") as f:
            policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(f.read()))
    else:
        policy = BrowserLikePolicyForHTTPS()
    if connectTo is None:
        return Agent(reactor, contextFactory=policy, pool=pool)
    return Agent.usingEndpointFactory(reactor, _Via(reactor, policy, connectTo), pool)


@attrs.define
class _Via:
    """
    Endpoints to one fixed address, with TLS for the URL's host.
    """

    reactor: Any
    policy: Any
    address: Tuple[str, int]

    def endpointForURI(self, uri: Any) -> Any:
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

        tcp = HostnameEndpoint(self.reactor, *self.address)
        if uri.scheme == b"https":
            return wrapClientTLS(self.policy.creatorForNetloc(uri.host, uri.port), tcp)
        return tcp


@implementer(IPolicyForHTTPS)
class _InsecurePolicy:
    """
    TLS without any certificate check (--insecure).
    """

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        from twisted.internet.ssl import CertificateOptions

        options = CertificateOptions(verify=False)
        return _UncheckedCreator(options.getContext())


@implementer(IOpenSSLClientConnectionCreator)
class _UncheckedCreator:
    def __init__(self, context: Any) -> None:
        self._context = context

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        from OpenSSL import SSL

        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_connect_state()
        return connection
