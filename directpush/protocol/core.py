# -*- test-case-name: tests.test_commands -*-
"""
What every command handler shares: the services it reaches through their
interfaces, the per-device state record, the provisioning gate, and the
rule that one device's requests touch its state one at a time.
"""

from __future__ import annotations

import contextlib
import enum
import json
import secrets
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Optional, Tuple

import attrs
from twisted.internet.defer import DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .. import wbxml
from ..interfaces import IDirectory, IMailbox, IMailboxBackend, IPushHub, IStateStore, ISubmission
from ..model import Folder, FolderType, validId
from . import mail
from .dispatch import Handler, Response, errorResponse, wbxmlResponse
from .render import Renderer, renderInline
from .request import EASRequest

log = Logger()

#: The root element each command answers with: where a common status
#: (142-144 and friends) goes.
COMMAND_ROOTS: Dict[str, str] = {
    "Sync": "AirSync:Sync",
    "SendMail": "ComposeMail:SendMail",
    "SmartForward": "ComposeMail:SmartForward",
    "SmartReply": "ComposeMail:SmartReply",
    "FolderSync": "FolderHierarchy:FolderSync",
    "FolderCreate": "FolderHierarchy:FolderCreate",
    "FolderDelete": "FolderHierarchy:FolderDelete",
    "FolderUpdate": "FolderHierarchy:FolderUpdate",
    "MoveItems": "Move:MoveItems",
    "GetItemEstimate": "GetItemEstimate:GetItemEstimate",
    "MeetingResponse": "MeetingResponse:MeetingResponse",
    "Search": "Search:Search",
    "Settings": "Settings:Settings",
    "Ping": "Ping:Ping",
    "ItemOperations": "ItemOperations:ItemOperations",
    "Provision": "Provision:Provision",
    "ResolveRecipients": "ResolveRecipients:ResolveRecipients",
    "ValidateCert": "ValidateCert:ValidateCert",
    "Find": "Find:Find",
}

#: Commands a device may send before it is provisioned (digest §7.1, §3.7).
PROVISIONING_EXEMPT = frozenset({"Provision", "Ping", "Settings"})

# Common statuses (MS-ASCMD 2.2.2).
STATUS_INVALID_CONTENT = 101
STATUS_SERVER_ERROR = 110
STATUS_MAILBOX_QUOTA = 113
STATUS_RECIPIENT_UNRESOLVED = 116
STATUS_PREVIOUSLY_SENT = 118
STATUS_NO_RECIPIENT = 119
STATUS_SUBMISSION_FAILED = 120
STATUS_REPLY_FAILED = 121
STATUS_REMOTE_WIPE = 140
STATUS_NOT_PROVISIONED = 142
STATUS_POLICY_REFRESH = 143
STATUS_INVALID_POLICY_KEY = 144
STATUS_ITEM_NOT_FOUND = 150


class Policy(enum.Enum):
    """
    Whether devices must provision before they sync.

    @cvar NONE: never ask; an unprompted Provision is answered "no policy".
    @cvar PERMISSIVE: ask every device to accept a policy that enforces
        nothing (some clients, and operators' audits, expect the handshake).
    """

    NONE = "none"
    PERMISSIVE = "permissive"


def dumps(value: Any, sortKeys: bool = True) -> bytes:
    """
    C{value} as compact JSON.

    @param sortKeys: sort every object's keys (stable bytes for equal
        values); a big map of items need not pay for sorting, nor for a
        sorted copy of its pairs.
    """
    return json.dumps(value, separators=(",", ":"), sort_keys=sortKeys).encode("utf-8")


def loads(raw: Optional[bytes]) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        # Unreadable state is treated as none: the device resynchronises,
        # which is better than failing every request forever.
        log.error("unreadable state value; starting afresh")
        return None


def newKey() -> str:
    """
    A fresh sync key prefix: random, so that keys of a reset state never
    match those a device remembers from before.
    """
    return secrets.token_hex(4)


def nextKey(key: str) -> str:
    """
    The key after C{key} ("ab12cd34-7" -> "ab12cd34-8").
    """
    prefix, _, n = key.rpartition("-")
    return f"{prefix}-{int(n) + 1}"


def policyKey() -> int:
    """
    A random non-zero unsigned 32-bit policy key.
    """
    return secrets.randbelow(0xFFFFFFFE) + 1


def statusResponse(command: str, status: int) -> Response:
    """
    C{<Command><Status>n</Status></Command>} in the command's namespace.
    """
    root = wbxml.E(COMMAND_ROOTS.get(command, "AirSync:Sync"), wbxml.E("Status", str(status)))
    return wbxmlResponse(root)


@attrs.define
class Services:
    """
    Everything command handlers reach, all through interfaces.

    @ivar domain: appended to plain user names to form e-mail addresses.
    """

    backend: IMailboxBackend
    store: IStateStore
    clock: IReactorTime
    submission: Optional[ISubmission] = None
    directory: Optional[IDirectory] = None
    policy: Policy = Policy.PERMISSIVE
    domain: Optional[str] = None
    render: Renderer = renderInline
    hub: Optional[IPushHub] = None
    minHeartbeat: int = 60
    maxHeartbeat: int = 3540
    maxPingFolders: int = 300
    #: Render the next window of a paged Sync while the device reads this
    #: one: worth it only with a renderer that works elsewhere (the worker
    #: pool), and harmful with one that works on the reactor thread.
    renderAhead: bool = False
    _locks: Dict[Tuple[str, str], DeferredLock] = attrs.field(factory=dict)
    #: (user, device, folder) -> what is being rendered ahead for it; see
    #: L{directpush.protocol.sync}.
    aheads: Dict[Tuple[str, str, str], Any] = attrs.field(factory=dict)

    def address(self, user: str) -> str:
        """
        The user's e-mail address.
        """
        if "@" in user or not self.domain:
            return user
        return f"{user}@{self.domain}"

    async def mailbox(self, user: str) -> IMailbox:
        return await self.backend.mailbox(user)

    async def device(self, request: EASRequest) -> Dict[str, Any]:
        """
        The device record: policy keys, device information, wipe state.
        """
        return loads(await self.store.load(request.user, request.deviceId, "device")) or {}

    async def saveDevice(self, request: EASRequest, record: Dict[str, Any]) -> None:
        await self.store.save(request.user, request.deviceId, {"device": dumps(record)})

    @contextlib.asynccontextmanager
    async def deviceLock(self, request: EASRequest) -> AsyncIterator[None]:
        """
        Hold the device's lock: its state is read, changed and written by
        one request before the next reads it. Never held while waiting for
        changes.
        """
        key = (request.user, request.deviceId)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = DeferredLock()
        await lock.acquire()
        try:
            yield
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(key, None)

    def supersede(self, request: EASRequest) -> None:
        """
        A new request of a device answers its waiting one at once.
        """
        if self.hub is not None:
            self.hub.supersede(request.user, request.deviceId)

    def serialised(self, handler: Handler) -> Handler:
        """
        Run C{handler} under the device's lock, after superseding the
        device's waiting request.
        """

        async def run(request: EASRequest, document: Optional[wbxml.Element], body: bytes) -> Response:
            self.supersede(request)
            async with self.deviceLock(request):
                return await handler(request, document, body)

        return run

    def provisioned(self, command: str, handler: Handler) -> Handler:
        """
        Refuse C{handler}'s command to devices that have not provisioned,
        as the protocol version says: HTTP 449 up to 12.1, status 142,
        143 or 144 from 14.0.
        """
        if command in PROVISIONING_EXEMPT:
            return handler

        async def run(request: EASRequest, document: Optional[wbxml.Element], body: bytes) -> Response:
            if self.policy is Policy.NONE:
                return await handler(request, document, body)
            record = await self.device(request)
            status = None
            if record.get("wipe"):
                status = STATUS_REMOTE_WIPE
            elif not record.get("policyKey"):
                status = STATUS_NOT_PROVISIONED
            elif request.policyKey != record["policyKey"]:
                status = STATUS_INVALID_POLICY_KEY if request.policyKey else STATUS_NOT_PROVISIONED
            if status is None:
                return await handler(request, document, body)
            log.info(
                "{command} from {user} device {device} needs provisioning ({status})",
                command=command,
                user=request.user,
                device=request.deviceId,
                status=status,
            )
            if request.versionNumber < 14.0:
                return errorResponse(449, "provision first")
            return statusResponse(command, status)

        return run


def folderIsMail(folder: Folder) -> bool:
    return folder.type in (
        FolderType.INBOX,
        FolderType.DRAFTS,
        FolderType.DELETED,
        FolderType.SENT,
        FolderType.OUTBOX,
        FolderType.MAIL,
        FolderType.GENERIC,
    )


async def folderById(mailbox: IMailbox) -> Dict[str, Folder]:
    return {f.id: f for f in await mailbox.folders()}


async def folderOfType(mailbox: IMailbox, kind: FolderType) -> Folder:
    for folder in await mailbox.folders():
        if folder.type == kind:
            return folder
    raise LookupError(kind)


async def findByMessageId(mailbox: IMailbox, folderId: str, messageId: str, since: float) -> Optional[str]:
    """
    The uid of a message of C{folderId} with this Message-ID that arrived
    at C{since} or later: how a send cut short by a crash finds what it
    already stored. Only the messages that arrived since then are read.
    """
    for info in await mailbox.messages(folderId):
        if info.received >= since and mail.summary(await mailbox.message(folderId, info.uid)).messageId == messageId:
            return info.uid
    return None


def splitServerId(serverId: Optional[str]) -> Optional[Tuple[str, str]]:
    """
    "folder:uid" -> (folder, uid), or None for anything else.
    """
    if not serverId or len(serverId) > 64:
        return None
    folderId, sep, uid = serverId.partition(":")
    if not sep or not validId(folderId) or not validId(uid):
        return None
    return folderId, uid


CommandFunction = Callable[[Services, EASRequest, Optional[wbxml.Element], bytes], Awaitable[Response]]
