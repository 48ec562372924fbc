# -*- test-case-name: tests.test_commands -*-
"""
Commands on items: GetItemEstimate, ItemOperations and MoveItems
(MS-ASCMD 2.2.1.9, 2.2.1.10, 2.2.1.12).
"""

from __future__ import annotations

import base64
import struct
from typing import Dict, List, Optional, Tuple

from twisted.logger import Logger

from .. import wbxml
from ..model import MailboxError, NoSuchFolder, NoSuchMessage
from ..wbxml import E
from . import mail
from .core import Services, dumps, folderById, loads, splitServerId
from .render import jobFor
from .dispatch import Response, errorResponse, wbxmlResponse
from .request import EASRequest
from .sync import dumpState, filterType, itemState, loadState, pendingChanges, stateKey

log = Logger()

MULTIPART_TYPE = "application/vnd.ms-sync.multipart"

#: The device's last moves, [SrcMsgId, DstFldId, DstMsgId]: a repeated
#: MoveItems whose answer was lost gets the same answer.
MOVES = "moves"
MOVE_MEMORY = 200


async def getItemEstimate(
    services: Services, request: EASRequest, document: Optional[wbxml.Element], body: bytes
) -> Response:
    if document is None or document.qname != "GetItemEstimate:GetItemEstimate":
        return wbxmlResponse(E("GetItemEstimate:GetItemEstimate", E("Status", "2")))
    mailbox = await services.mailbox(request.user)
    folders = await folderById(mailbox)
    answer = E("GetItemEstimate:GetItemEstimate")
    for collection in document.findall("Collections/Collection"):
        collectionId = collection.findtext("CollectionId") or ""
        key = collection.findtext("AirSync:SyncKey")
        options = collection.find("AirSync:Options")
        if options is None and collection.find("AirSync:FilterType") is not None:
            # 12.x puts FilterType straight into the collection.
            options = E("AirSync:Options", E("FilterType", collection.findtext("AirSync:FilterType") or "0"))
        response = answer.add("Response")
        if collectionId not in folders:
            response.add("Status", "2")
            response.add("Collection", E("CollectionId", collectionId))
            continue
        state = loadState(await services.store.load(request.user, request.deviceId, stateKey(collectionId)))
        if key in (None, "0") or state is None:
            response.add("Status", "3" if key in (None, "0") else "4")
            response.add("Collection", E("CollectionId", collectionId))
            continue
        if key != state["key"]:
            response.add("Status", "4")
            response.add("Collection", E("CollectionId", collectionId))
            continue
        # Counted, not listed: a big folder's estimate holds no item.
        _, total = await pendingChanges(
            mailbox, collectionId, state["items"], filterType(options), services.clock.seconds(), limit=0
        )
        response.add("Status", "1")
        response.add("Collection", E("CollectionId", collectionId), E("Estimate", str(total)))
    return wbxmlResponse(answer)


class _Parts:
    """
    The binary parts of a multipart ItemOperations answer.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.parts: List[bytes] = []

    def add(self, data: bytes) -> int:
        self.parts.append(data)
        return len(self.parts)  # part 0 is the WBXML itself

    def response(self, tree: wbxml.Element) -> Response:
        if not self.enabled:
            return wbxmlResponse(tree)
        parts = [wbxml.encode(tree)] + self.parts
        # MS-ASCMD 2.2.1.10.1.1: a count, then (offset, length) per part,
        # offsets from the start; 32-bit little-endian, as Windows writes.
        header = 4 + 8 * len(parts)
        table = [struct.pack("<i", len(parts))]
        offset = header
        for part in parts:
            table.append(struct.pack("<ii", offset, len(part)))
            offset += len(part)
        return Response(200, b"".join(table + parts), MULTIPART_TYPE)


def _range(text: Optional[str], total: int) -> Optional[Tuple[int, int]]:
    """
    "0-1023" -> (0, 1023) clipped to the data; None when malformed.
    """
    if text is None:
        return (0, max(total - 1, 0))
    start, sep, end = text.partition("-")
    if not sep or not start.isdigit() or not end.isdigit() or int(start) > int(end):
        return None
    return int(start), min(int(end), max(total - 1, 0))


async def itemOperations(
    services: Services, request: EASRequest, document: Optional[wbxml.Element], body: bytes
) -> Response:
    if document is None or document.qname != "ItemOperations:ItemOperations":
        return wbxmlResponse(E("ItemOperations:ItemOperations", E("Status", "2")))
    parts = _Parts(request.acceptMultiPart)
    mailbox = await services.mailbox(request.user)
    answer = E("ItemOperations:ItemOperations", E("Status", "1"))
    responses = answer.add("Response")
    for operation in document.children:
        if operation.name == "Fetch":
            responses.append(await _fetch(services, request, mailbox, operation, parts))
        elif operation.name == "EmptyFolderContents":
            collectionId = operation.findtext("AirSync:CollectionId") or ""
            status = "1"
            try:
                await mailbox.empty(collectionId)
            except NoSuchFolder:
                status = "6"
            except MailboxError:
                status = "3"
            responses.add("EmptyFolderContents", E("Status", status), E("AirSync:CollectionId", collectionId))
        else:
            # Conversation moves are not supported here.
            responses.add(operation.name, E("Status", "156" if operation.name == "Move" else "2"))
    return parts.response(answer)


async def _fetch(
    services: Services, request: EASRequest, mailbox, operation: wbxml.Element, parts: _Parts
) -> wbxml.Element:
    store = (operation.findtext("Store") or "").lower()
    reply = E("ItemOperations:Fetch")
    if store != "mailbox":
        reply.add("Status", "9")
        return reply
    options = operation.find("Options")
    reference = operation.findtext("AirSyncBase:FileReference")
    if reference is not None:
        return await _fetchAttachment(mailbox, reference, options, parts)
    serverId = operation.findtext("AirSync:ServerId") or operation.findtext("Search:LongId")
    collectionId = operation.findtext("AirSync:CollectionId")
    ids = splitServerId(serverId)
    if ids is None or (collectionId is not None and collectionId != ids[0]):
        reply.add("Status", "6")
        return reply
    folderId, uid = ids
    try:
        listing = {i.uid: i for i in await mailbox.messages(folderId)}
        info = listing.get(uid)
        if info is None:
            raise NoSuchMessage(uid)
        raw = await mailbox.message(folderId, uid)
    except (NoSuchFolder, NoSuchMessage):
        reply.add("Status", "6")
        return reply
    mailOptions = mail.parseOptions(_asSyncOptions(options), version=request.version)
    [data] = await services.render([jobFor(raw, info, folderId, mailOptions)])
    if parts.enabled:
        body = data.find("AirSyncBase:Body")
        if body is not None:
            dataElement = body.find("Data")
            if dataElement is not None:
                index = parts.add((dataElement.text or "").encode("utf-8"))
                body.children = [c for c in body.children if c is not dataElement]
                body.add("ItemOperations:Part", str(index))
    reply.add("Status", "1")
    reply.add("AirSync:CollectionId", folderId)
    reply.add("AirSync:ServerId", f"{folderId}:{uid}")
    reply.add("AirSync:Class", "Email")
    reply.add("Properties", *data.children)
    return reply


def _asSyncOptions(options: Optional[wbxml.Element]) -> Optional[wbxml.Element]:
    """
    ItemOperations Options carry the same BodyPreference and MIMESupport
    as Sync's: present them as Sync Options to the mail module.
    """
    if options is None:
        return None
    out = E("AirSync:Options")
    for child in options.children:
        if child.ns in ("AirSyncBase", "AirSync"):
            out.append(child)
    return out


async def _fetchAttachment(mailbox, reference: str, options: Optional[wbxml.Element], parts: _Parts) -> wbxml.Element:
    reply = E("ItemOperations:Fetch")
    serverId, sep, index = reference.rpartition(":")
    ids = splitServerId(serverId)
    if ids is None or not sep or not index.isdigit():
        reply.add("Status", "15")
        reply.add("AirSyncBase:FileReference", reference)
        return reply
    try:
        raw = await mailbox.message(*ids)
    except (NoSuchFolder, NoSuchMessage):
        reply.add("Status", "6")
        reply.add("AirSyncBase:FileReference", reference)
        return reply
    attachment = mail.attachment(raw, int(index))
    if attachment is None:
        reply.add("Status", "15")
        reply.add("AirSyncBase:FileReference", reference)
        return reply
    data = attachment.data
    wanted = _range(options.findtext("Range") if options is not None else None, len(data))
    if wanted is None or (data and wanted[0] >= len(data)):
        reply.add("Status", "8")
        reply.add("AirSyncBase:FileReference", reference)
        return reply
    chunk = data[wanted[0] : wanted[1] + 1]
    reply.add("Status", "1")
    reply.add("AirSyncBase:FileReference", reference)
    properties = reply.add("Properties", E("AirSyncBase:ContentType", attachment.contentType))
    if options is not None and options.find("Range") is not None:
        properties.add("Range", f"{wanted[0]}-{wanted[0] + len(chunk) - 1}")
        properties.add("Total", str(len(data)))
    if parts.enabled:
        properties.add("Part", str(parts.add(chunk)))
    else:
        properties.add("Data", base64.b64encode(chunk).decode("ascii"))
    return reply


async def moveItems(
    services: Services, request: EASRequest, document: Optional[wbxml.Element], body: bytes
) -> Response:
    if document is None or document.qname != "Move:MoveItems":
        return wbxmlResponse(E("Move:MoveItems", E("Status", "5")))
    mailbox = await services.mailbox(request.user)
    folders = await folderById(mailbox)
    answer = E("Move:MoveItems")
    states: Dict[str, Optional[dict]] = {}
    moves: List[List[str]] = loads(await services.store.load(request.user, request.deviceId, MOVES)) or []
    moved = len(moves)

    async def state(collectionId: str) -> Optional[dict]:
        if collectionId not in states:
            states[collectionId] = loadState(
                await services.store.load(request.user, request.deviceId, stateKey(collectionId))
            )
        return states[collectionId]

    for move in document.findall("Move"):
        srcMsgId = move.findtext("SrcMsgId") or ""
        source = move.findtext("SrcFldId") or ""
        destination = move.findtext("DstFldId") or ""
        response = answer.add("Response", E("SrcMsgId", srcMsgId))
        ids = splitServerId(srcMsgId)
        if ids is None or ids[0] != source or source not in folders:
            response.add("Status", "1")
            continue
        if destination not in folders:
            response.add("Status", "2")
            continue
        if destination == source:
            response.add("Status", "4")
            continue
        try:
            listing = {i.uid: i for i in await mailbox.messages(source)}
            info = listing.get(ids[1])
            if info is None:
                done = [m[2] for m in moves if m[:2] == [srcMsgId, destination]]
                if done:
                    # The first answer was lost after the move and its state
                    # were saved: the destination's state already has it,
                    # so only this answer can tell the device.
                    log.info(
                        "{user} device {device} repeats a move of {item}",
                        user=request.user, device=request.deviceId, item=srcMsgId,
                    )
                    response.add("Status", "3")
                    response.add("DstMsgId", done[-1])
                    continue
                raise NoSuchMessage(srcMsgId)
            newUid = await mailbox.move(source, ids[1], destination)
        except NoSuchMessage:
            response.add("Status", "1")
            continue
        except MailboxError:
            log.failure("moving {item} failed", item=srcMsgId)
            response.add("Status", "5")
            continue
        # The device moved it itself: neither folder reports it back.
        sourceState = await state(source)
        if sourceState is not None:
            sourceState["items"].pop(ids[1], None)
        destinationState = await state(destination)
        if destinationState is not None:
            destinationState["items"][newUid] = itemState(info)
        response.add("Status", "3")
        response.add("DstMsgId", f"{destination}:{newUid}")
        moves.append([srcMsgId, destination, f"{destination}:{newUid}"])
    updates: Dict[str, Optional[bytes]] = {stateKey(k): dumpState(v) for k, v in states.items() if v is not None}
    if len(moves) > moved:
        updates[MOVES] = dumps(moves[-MOVE_MEMORY:])
    if updates:
        await services.store.save(request.user, request.deviceId, updates)
    return wbxmlResponse(answer)


async def getAttachment(
    services: Services, request: EASRequest, document: Optional[wbxml.Element], body: bytes
) -> Response:
    """
    GetAttachment (2.5-12.1 clients): the attachment named by the
    C{AttachmentName} parameter (a FileReference), raw.
    """
    reference = request.parameters.get("AttachmentName", "")
    serverId, sep, index = reference.rpartition(":")
    ids = splitServerId(serverId)
    if ids is None or not sep or not index.isdigit():
        return errorResponse(400, "bad AttachmentName")
    mailbox = await services.mailbox(request.user)
    try:
        raw = await mailbox.message(*ids)
    except (NoSuchFolder, NoSuchMessage):
        return errorResponse(404, "no such attachment")
    attachment = mail.attachment(raw, int(index))
    if attachment is None:
        return errorResponse(404, "no such attachment")
    return Response(200, attachment.data, attachment.contentType)
