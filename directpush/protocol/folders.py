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
from typing import Any, Dict, List, Optional

from twisted.logger import Logger

from .. import wbxml
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
        if key == previous.get("key") and previous.get("reply"):
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


async def _checkKey(
    services: Services, request: EASRequest, document: wbxml.Element
) -> Optional[Dict[str, Any]]:
    state = await loadHierarchy(services, request)
    if state is None or document.findtext("SyncKey") != state["key"]:
        return None
    return state


async def _commit(
    services: Services,
    request: EASRequest,
    state: Dict[str, Any],
    folders: Dict[str, List[Any]],
    extra: Optional[Dict[str, Optional[bytes]]] = None,
) -> str:
    """
    Record that the device now knows C{folders} (its own change is not
    echoed back to it) under a new key, with C{extra} values, at once.
    """
    key = nextKey(state["key"])
    values: Dict[str, Optional[bytes]] = dict(extra or {})
    values[HIERARCHY] = dumps({"key": key, "folders": folders, "prev": {"key": state["key"]}})
    await services.store.save(request.user, request.deviceId, values)
    return key


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


async def folderCreate(
    services: Services, request: EASRequest, document: Optional[wbxml.Element], body: bytes
) -> Response:
    def status(code: str) -> Response:
        return wbxmlResponse(E("FolderHierarchy:FolderCreate", E("Status", code)))

    if document is None or document.qname != "FolderHierarchy:FolderCreate":
        return status(MALFORMED)
    name = document.findtext("DisplayName")
    kind = document.findtext("Type", "12")
    if not name or kind not in ("1", "12"):
        # Only mail folders live in a mailbox here.
        return status(MALFORMED if not name else SERVER_ERROR)
    state = await _checkKey(services, request, document)
    if state is None:
        return status(BAD_KEY)
    mailbox = await services.mailbox(request.user)
    try:
        folder = await mailbox.createFolder(_parent(document.findtext("ParentId")), name)
    except MailboxError as e:
        return status(_statusFor(e, create=True))
    folders = dict(state["folders"])
    folders[folder.id] = _entry(folder)
    key = await _commit(services, request, state, folders)
    return wbxmlResponse(
        E("FolderHierarchy:FolderCreate", E("Status", OK), E("SyncKey", key), E("ServerId", folder.id))
    )


async def folderUpdate(
    services: Services, request: EASRequest, document: Optional[wbxml.Element], body: bytes
) -> Response:
    def status(code: str) -> Response:
        return wbxmlResponse(E("FolderHierarchy:FolderUpdate", E("Status", code)))

    if document is None or document.qname != "FolderHierarchy:FolderUpdate":
        return status(MALFORMED)
    folderId = document.findtext("ServerId")
    name = document.findtext("DisplayName")
    if not folderId or not name:
        return status(MALFORMED)
    state = await _checkKey(services, request, document)
    if state is None:
        return status(BAD_KEY)
    mailbox = await services.mailbox(request.user)
    try:
        folder = await mailbox.updateFolder(folderId, _parent(document.findtext("ParentId")), name)
    except MailboxError as e:
        return status(_statusFor(e))
    folders = dict(state["folders"])
    folders[folder.id] = _entry(folder)
    key = await _commit(services, request, state, folders)
    return wbxmlResponse(E("FolderHierarchy:FolderUpdate", E("Status", OK), E("SyncKey", key)))


async def folderDelete(
    services: Services, request: EASRequest, document: Optional[wbxml.Element], body: bytes
) -> Response:
    def status(code: str) -> Response:
        return wbxmlResponse(E("FolderHierarchy:FolderDelete", E("Status", code)))

    if document is None or document.qname != "FolderHierarchy:FolderDelete":
        return status(MALFORMED)
    folderId = document.findtext("ServerId")
    if not folderId:
        return status(MALFORMED)
    state = await _checkKey(services, request, document)
    if state is None:
        return status(BAD_KEY)
    mailbox = await services.mailbox(request.user)
    try:
        await mailbox.deleteFolder(folderId)
    except MailboxError as e:
        return status(_statusFor(e))
    remaining = {f.id for f in await mailbox.folders()}
    folders = {k: v for k, v in state["folders"].items() if k in remaining}
    key = await _commit(services, request, state, folders, {f"sync:{folderId}": None})
    return wbxmlResponse(E("FolderHierarchy:FolderDelete", E("Status", OK), E("SyncKey", key)))
