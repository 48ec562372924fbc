# -*- test-case-name: tests.test_ping -*-
"""
Ping (MS-ASCMD 2.2.1.13): Direct Push.

The device names folders and a heartbeat; the answer comes the moment one
of those folders changes for it (Status 2), or a little before the
heartbeat ends (Status 1). Parameters are cached per device, so an empty
or partial Ping reuses them.
"""

from __future__ import annotations

from functools import partial
from typing import FrozenSet, List, Optional, Tuple

from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import wbxml
from ..wbxml import E
from .core import Services, dumps, loads
from .dispatch import Pending, Response, wbxmlResponse
from .folders import loadHierarchy
from .request import EASRequest
from .sync import loadState, pendingChanges, stateKey

log = Logger()

PING_CACHE = "ping"

# Ping statuses (MS-ASCMD 2.2.3.177.11).
EXPIRED = "1"
CHANGED = "2"
MISSING_PARAMETERS = "3"
SYNTAX_ERROR = "4"
BAD_HEARTBEAT = "5"
TOO_MANY_FOLDERS = "6"
HIERARCHY_CHANGED = "7"
SERVER_ERROR = "8"


def answerMargin(heartbeat: int) -> float:
    """
    How long before the heartbeat ends the answer leaves: clients time out
    at the heartbeat (plus a little), and must never be first.
    """
    return min(5.0, heartbeat / 10)


def _status(code: str, *extra: wbxml.Element) -> Response:
    return wbxmlResponse(E("Ping:Ping", E("Status", code), *extra))


async def changedFolders(services: Services, request: EASRequest, folderIds: FrozenSet[str]) -> FrozenSet[str]:
    """
    The folders in which the device's last synced state lacks something.

    A folder the device never synced is left out (it would ask the device to
    sync something it does not want, and Horde saw iOS loop on that).
    """
    return await _changedFor(services, request.user, request.deviceId, folderIds)


async def _changedFor(services: Services, user: str, deviceId: str, folderIds: FrozenSet[str]) -> FrozenSet[str]:
    """
    L{changedFolders} by user and device: what a waiting Ping keeps to
    verify changes, rather than its whole parsed request.
    """
    mailbox = await services.mailbox(user)
    now = services.clock.seconds()
    changed = set()
    for folderId in folderIds:
        state = loadState(await services.store.load(user, deviceId, stateKey(folderId)))
        if state is None:
            continue
        filterValue = state.get("filter", 0)
        # Whether there is any change, not the list of them: a folder the
        # device is still filling would list all it lacks.
        _, total = await pendingChanges(mailbox, folderId, state["items"], filterValue, now, limit=0)
        if total:
            changed.add(folderId)
    return frozenset(changed)


async def ping(
    services: Services, request: EASRequest, document: Optional[wbxml.Element], body: bytes
) -> "Response | Pending":
    if services.hub is None:
        return _status(SERVER_ERROR)
    # The heartbeat runs from the request's arrival: under load the state
    # work below may take a while, and the client's clock started at once.
    arrived = services.clock.seconds()
    services.supersede(request)
    async with services.deviceLock(request):
        checked = await _parameters(services, request, document)
        if isinstance(checked, Response):
            return checked
        heartbeat, folders = checked
        folderIds = frozenset(folderId for folderId, _ in folders)
        changed = await changedFolders(services, request, folderIds)
    order = [folderId for folderId, _ in folders]
    if not changed:
        log.debug(
            "{user} device {device} pings {count} folders for {heartbeat}s",
            user=request.user, device=request.deviceId, count=len(order), heartbeat=heartbeat,
        )
        waiting = services.hub.wait(
            request.user,
            request.deviceId,
            folderIds,
            heartbeat - answerMargin(heartbeat) - (services.clock.seconds() - arrived),
            partial(_changedFor, services, request.user, request.deviceId),
        )
        # The wait may last an hour, for thousands of devices at once: it
        # is a Deferred and one callback, not this coroutine. (addCallbacks
        # with explicit arguments: addCallback makes two dicts per call.)
        return Pending(waiting.addCallbacks(_waited, _same, callbackArgs=(order,)))
    return _changed(changed, order)


def _same(failure: Failure) -> Failure:
    return failure


def _waited(result: Optional[FrozenSet[str]], order: List[str]) -> Response:
    if not result:
        # The heartbeat ended, or a newer request took over.
        return _status(EXPIRED)
    return _changed(result, order)


def _changed(changed: FrozenSet[str], order: List[str]) -> Response:
    return _status(CHANGED, E("Folders", *(E("Folder", folderId) for folderId in order if folderId in changed)))


async def _parameters(
    services: Services, request: EASRequest, document: Optional[wbxml.Element]
) -> "Tuple[int, List[Tuple[str, str]]] | Response":
    """
    The heartbeat and folders this Ping means, from the request and the
    cache, validated and cached; or the refusal.
    """
    cached = loads(await services.store.load(request.user, request.deviceId, PING_CACHE)) or {}
    heartbeatText: Optional[str] = None
    folders: Optional[List[Tuple[str, str]]] = None
    if document is not None:
        if document.qname != "Ping:Ping":
            return _status(SYNTAX_ERROR)
        heartbeatText = document.findtext("HeartbeatInterval")
        listed = document.find("Folders")
        if listed is not None:
            folders = []
            for folder in listed.findall("Folder"):
                folderId = folder.findtext("Id")
                if not folderId or len(folderId) > 64:
                    return _status(SYNTAX_ERROR)
                folders.append((folderId, folder.findtext("Class") or "Email"))
            if not folders:
                return _status(SYNTAX_ERROR)
        if heartbeatText is None and folders is None:
            return _status(SYNTAX_ERROR)
    if heartbeatText is None:
        heartbeat = cached.get("heartbeat")
    elif heartbeatText.isdigit() and len(heartbeatText) < 10:
        heartbeat = int(heartbeatText)
    else:
        return _status(SYNTAX_ERROR)
    if folders is None:
        folders = [tuple(f) for f in cached.get("folders", [])] or None  # type: ignore[misc]
    if heartbeat is None or folders is None:
        return _status(MISSING_PARAMETERS)
    if heartbeat < services.minHeartbeat:
        return _status(BAD_HEARTBEAT, E("HeartbeatInterval", str(services.minHeartbeat)))
    if heartbeat > services.maxHeartbeat:
        return _status(BAD_HEARTBEAT, E("HeartbeatInterval", str(services.maxHeartbeat)))
    if len(folders) > services.maxPingFolders:
        return _status(TOO_MANY_FOLDERS, E("MaxFolders", str(services.maxPingFolders)))
    hierarchy = await loadHierarchy(services, request)
    if hierarchy is None:
        return _status(HIERARCHY_CHANGED)
    mailbox = await services.mailbox(request.user)
    existing = {f.id for f in await mailbox.folders()}
    for folderId, _ in folders:
        if folderId not in hierarchy["folders"] or folderId not in existing:
            log.info(
                "{user} device {device} pings unknown folder {folder}",
                user=request.user, device=request.deviceId, folder=folderId[:64],
            )
            return _status(HIERARCHY_CHANGED)
    wanted = {"heartbeat": heartbeat, "folders": [list(f) for f in folders]}
    if wanted != cached:
        await services.store.save(request.user, request.deviceId, {PING_CACHE: dumps(wanted)})
    return heartbeat, folders
