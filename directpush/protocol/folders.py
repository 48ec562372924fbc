# -*- test-case-name: tests.test_commands -*-
"""
FolderSync, FolderCreate, FolderUpdate and FolderDelete (MS-ASCMD 2.2.1.3-5).

The device's view of the hierarchy is kept per device (key C{hierarchy}):
the folders it was last told about and the current and previous keys, with
the answer that carried the current key, so that a repeated request gets
the same answer (digest §5.5).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from twisted.logger import Logger

from .. import wbxml
from ..interfaces import IMailbox
from ..model import (
    Folder,
    FolderExists,
    InvalidFolderName,
    MailboxError,
    NoSuchFolder,
    SpecialFolder,
)
from ..wbxml import E
from .core import Services, dumps, loads, newKey, nextKey
from .dispatch import Response, wbxmlResponse
from .request import EASRequest

log = Logger()

HIERARCHY = "hierarchy"

# Statuses shared by the four commands (MS-ASCMD 2.2.3.177.3-6).
OK = "1"
EXISTS = "2"
SYSTEM_FOLDER = "3"
NOT_FOUND = "4"
PARENT_NOT_FOUND = "5"
SERVER_ERROR = "6"
BAD_KEY = "9"
MALFORMED = "10"


def _entry(folder: Folder) -> List[Any]:
    return [folder.parentId or "0", folder.name, int(folder.type)]


def _folderElement(kind: str, folderId: str, entry: List[Any]) -> wbxml.Element:
    return E(
        kind,
        E("ServerId", folderId),
        E("ParentId", entry[0]),
        E("DisplayName", entry[1]),
        E("Type", str(entry[2])),
    )


async def loadHierarchy(services: Services, request: EASRequest) -> Optional[Dict[str, Any]]:
    return loads(await services.store.load(request.user, request.deviceId, HIERARCHY))


async def folderSync(
    services: Services, request: EASRequest, document: Optional[wbxml.Element], body: bytes
) -> Response:
    def status(code: str) -> Response:
        return wbxmlResponse(E("FolderHierarchy:FolderSync", E("Status", code)))

    key = document.findtext("SyncKey") if document is not None else None
    if document is None or document.qname != "FolderHierarchy:FolderSync" or key is None:
        return status(MALFORMED)
    state = await loadHierarchy(services, request)
    reset = key == "0"
    if not reset:
        if state is None:
            return status(BAD_KEY)
        previous = state.get("prev") or {}
        if key == previous.get("key") and previous.get("reply") and previous.get("command", "FolderSync") == "FolderSync":
            # The answer to this key was lost: send it again.
            return Response(200, base64.b64decode(previous["reply"]), "application/vnd.ms-sync.wbxml")
        if key != state["key"]:
            return status(BAD_KEY)
    known: Dict[str, List[Any]] = {} if reset else state["folders"]
    mailbox = await services.mailbox(request.user)
    current = {f.id: _entry(f) for f in await mailbox.folders()}

    changes: List[wbxml.Element] = []
    for folderId, entry in current.items():
        if folderId not in known:
            changes.append(_folderElement("Add", folderId, entry))
        elif known[folderId] != entry:
            changes.append(_folderElement("Update", folderId, entry))
    deletes = [E("Delete", E("ServerId", folderId)) for folderId in known if folderId not in current]
    changes = [c for c in changes if c.name == "Update"] + deletes + [c for c in changes if c.name == "Add"]

    newSyncKey = f"{newKey()}-1" if reset else (nextKey(key) if changes else key)
    answer = E(
        "FolderHierarchy:FolderSync",
        E("Status", OK),
        E("SyncKey", newSyncKey),
        E("Changes", E("Count", str(len(changes))), *changes),
    )
    response = wbxmlResponse(answer)
    if newSyncKey != key:
        updates: Dict[str, Optional[bytes]] = {
            HIERARCHY: dumps(
                {
                    "key": newSyncKey,
                    "folders": current,
                    "prev": {"key": key, "reply": base64.b64encode(response.body).decode("ascii")},
                }
            )
        }
        if reset:
            # A new hierarchy restarts every collection at SyncKey 0.
            for name in await services.store.keys(request.user, request.deviceId, "sync:"):
                updates[name] = None
            updates["synccache"] = None
        await services.store.save(request.user, request.deviceId, updates)
    return response


def _statusFor(error: MailboxError, create: bool = False) -> str:
    if isinstance(error, FolderExists):
        return EXISTS
    if isinstance(error, SpecialFolder):
        return SYSTEM_FOLDER
    if isinstance(error, NoSuchFolder):
        return PARENT_NOT_FOUND if create else NOT_FOUND
    if isinstance(error, InvalidFolderName):
        return MALFORMED
    return SERVER_ERROR


def _parent(value: Optional[str]) -> Optional[str]:
    return None if value in (None, "", "0") else value


#: What a folder command does to the mailbox: given the request, the
#: mailbox and the folders the device knows, it returns the folders the
#: device knows afterwards, extra state values to write with them, and the
#: elements its answer carries after Status and SyncKey. It raises
#: L{MailboxError} for the status to answer.
FolderAction = Callable[
    [wbxml.Element, IMailbox, Dict[str, List[Any]]],
    Awaitable[Tuple[Dict[str, List[Any]], Dict[str, Optional[bytes]], List[wbxml.Element]]],
]


async def _changeHierarchy(
    services: Services,
    request: EASRequest,
    document: Optional[wbxml.Element],
    body: bytes,
    required: Tuple[str, ...],
    action: FolderAction,
) -> Response:
    """
    What FolderCreate, FolderUpdate and FolderDelete share: the document's
    checks, the hierarchy key, and the new key recorded with the answer,
    so that a device whose answer was lost (a crash, a dropped connection)
    and that repeats the request with the same key gets the same answer.
    """
    command = request.command
    root = f"FolderHierarchy:{command}"

    def status(code: str) -> Response:
        return wbxmlResponse(E(root, E("Status", code)))

    if document is None or document.qname != root or not all(document.findtext(f) for f in required):
        return status(MALFORMED)
    state = await loadHierarchy(services, request)
    key = document.findtext("SyncKey")
    if state is None:
        return status(BAD_KEY)
    previous = state.get("prev") or {}
    digest = hashlib.sha256(body).hexdigest()
    if key == previous.get("key") and previous.get("command") == command and previous.get("request") == digest:
        log.info("{user} device {device} repeats {command}: same answer", user=request.user, device=request.deviceId, command=command)
        return Response(200, base64.b64decode(previous["reply"]), "application/vnd.ms-sync.wbxml")
    if key != state["key"]:
        return status(BAD_KEY)
    mailbox = await services.mailbox(request.user)
    try:
        folders, extra, children = await action(document, mailbox, dict(state["folders"]))
    except MailboxError as e:
        return status(_statusFor(e, create=command == "FolderCreate"))
    newSyncKey = nextKey(state["key"])
    response = wbxmlResponse(E(root, E("Status", OK), E("SyncKey", newSyncKey), *children))
    values: Dict[str, Optional[bytes]] = dict(extra)
    values[HIERARCHY] = dumps(
        {
            "key": newSyncKey,
            "folders": folders,
            "prev": {
                "key": state["key"],
                "command": command,
                "request": digest,
                "reply": base64.b64encode(response.body).decode("ascii"),
            },
        }
    )
    await services.store.save(request.user, request.deviceId, values)
    return response


async def _create(
    document: wbxml.Element, mailbox: IMailbox, folders: Dict[str, List[Any]]
) -> Tuple[Dict[str, List[Any]], Dict[str, Optional[bytes]], List[wbxml.Element]]:
    if document.findtext("Type", "12") not in ("1", "12"):
        # Only mail folders live in a mailbox here.
        raise MailboxError("not a mail folder")
    parentId = _parent(document.findtext("ParentId"))
    name = document.findtext("DisplayName") or ""
    try:
        folder = await mailbox.createFolder(parentId, name)
    except FolderExists:
        # Made by this request before a crash cut it short (the device's
        # state never heard of it): the repeat finishes the job.
        made = [
            f for f in await mailbox.folders()
            if f.parentId == parentId and f.name == name and f.id not in folders
        ]
        if not made:
            raise
        folder = made[0]
    folders[folder.id] = _entry(folder)
    return folders, {}, [E("ServerId", folder.id)]


async def _update(
    document: wbxml.Element, mailbox: IMailbox, folders: Dict[str, List[Any]]
) -> Tuple[Dict[str, List[Any]], Dict[str, Optional[bytes]], List[wbxml.Element]]:
    folderId = document.findtext("ServerId") or ""
    folder = await mailbox.updateFolder(folderId, _parent(document.findtext("ParentId")), document.findtext("DisplayName") or "")
    folders[folder.id] = _entry(folder)
    return folders, {}, []


async def _delete(
    document: wbxml.Element, mailbox: IMailbox, folders: Dict[str, List[Any]]
) -> Tuple[Dict[str, List[Any]], Dict[str, Optional[bytes]], List[wbxml.Element]]:
    folderId = document.findtext("ServerId") or ""
    try:
        await mailbox.deleteFolder(folderId)
    except NoSuchFolder:
        # Deleted by this request before a crash cut it short: the device's
        # state still lists it.
        if folderId not in folders:
            raise
    remaining = {f.id for f in await mailbox.folders()}
    return {k: v for k, v in folders.items() if k in remaining}, {f"sync:{folderId}": None}, []


async def folderCreate(
    services: Services, request: EASRequest, document: Optional[wbxml.Element], body: bytes
) -> Response:
    return await _changeHierarchy(services, request, document, body, ("DisplayName",), _create)


async def folderUpdate(
    services: Services, request: EASRequest, document: Optional[wbxml.Element], body: bytes
) -> Response:
    return await _changeHierarchy(services, request, document, body, ("ServerId", "DisplayName"), _update)


async def folderDelete(
    services: Services, request: EASRequest, document: Optional[wbxml.Element], body: bytes
) -> Response:
    return await _changeHierarchy(services, request, document, body, ("ServerId",), _delete)
