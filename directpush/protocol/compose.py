# -*- test-case-name: tests.test_commands -*-
"""
SendMail, SmartReply and SmartForward (MS-ASCMD 2.2.1.17, .19, .20):
raw MIME bodies up to 12.1, ComposeMail documents from 14.0.
"""

from __future__ import annotations

import email.utils
import hashlib
from typing import Dict, List, Optional

from twisted.logger import Logger

from .. import wbxml
from ..model import Flag, FolderType, MailboxError, NoSuchFolder, NoSuchMessage
from ..wbxml import E
from . import mail
from .core import (
    STATUS_INVALID_CONTENT,
    STATUS_ITEM_NOT_FOUND,
    STATUS_NO_RECIPIENT,
    STATUS_PREVIOUSLY_SENT,
    STATUS_SERVER_ERROR,
    STATUS_SUBMISSION_FAILED,
    Services,
    dumps,
    findByMessageId,
    folderOfType,
    loads,
    splitServerId,
)
from .dispatch import Response, errorResponse, wbxmlResponse
from .request import EASRequest

log = Logger()

SENT_IDS = "sentids"
#: How many ClientIds of sent mail a device's state remembers.
SENT_ID_MEMORY = 500
#: ClientId -> when its sending began, until it is done: a device repeating
#: a send whose answer was lost to a crash meets it here.
SENDING = "sending"
SENDING_MEMORY = 50
#: Stored times are compared with mailbox arrival times, which some stores
#: keep to the second only.
ARRIVAL_SLACK = 2.0


def addMissingHeaders(raw: bytes, domain: str, now: float, stableId: str = "") -> bytes:
    """
    Phones normally write Date and Message-ID; add what is missing, in
    front, so that the client's bytes stay as they are.

    @param stableId: when given, the Message-ID is made from it, so that a
        repeated send of the same mail carries the same one.
    """
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].lower()
    extra = b""
    if not head.startswith(b"date:") and b"\ndate:" not in head:
        extra += b"Date: " + email.utils.formatdate(now).encode("ascii") + b"\r\n"
    if not head.startswith(b"message-id:") and b"\nmessage-id:" not in head:
        if stableId:
            local = hashlib.sha256(stableId.encode("utf-8")).hexdigest()[:32]
            messageId = f"<{local}@{domain}>"
        else:
            messageId = email.utils.make_msgid(domain=domain)
        extra += b"Message-ID: " + messageId.encode("ascii") + b"\r\n"
    return extra + raw


async def compose(
    services: Services, request: EASRequest, document: Optional[wbxml.Element], body: bytes
) -> Response:
    """
    The three commands share everything but the source message.
    """
    command = request.command
    root = f"ComposeMail:{command}"

    def failure(status: int) -> Response:
        if request.versionNumber < 14.0:
            # 12.1 has no status document for these: HTTP says it.
            return errorResponse(503 if status == STATUS_SERVER_ERROR else 400, f"{command} failed ({status})")
        return wbxmlResponse(E(root, E("Status", str(status))))

    if request.versionNumber >= 14.0:
        if document is None or document.qname != root:
            return failure(STATUS_INVALID_CONTENT)
        raw = document.find("Mime")
        if raw is None or raw.value is None:
            return failure(STATUS_INVALID_CONTENT)
        message = raw.value if isinstance(raw.value, bytes) else raw.value.encode("utf-8")
        clientId = document.findtext("ClientId") or ""
        saveInSent = document.find("SaveInSentItems") is not None
        replaceMime = document.find("ReplaceMime") is not None
        source = document.find("Source")
        sourceId: Optional[str] = None
        if source is not None:
            longId = source.findtext("LongId")
            folderId, itemId = source.findtext("FolderId"), source.findtext("ItemId")
            sourceId = longId or (f"{folderId}:{itemId.rpartition(':')[2]}" if folderId and itemId else itemId)
    else:
        message = body
        clientId = ""
        saveInSent = request.parameters.get("SaveInSent") == "T"
        replaceMime = False
        longId = request.parameters.get("LongId")
        itemId = request.parameters.get("ItemId")
        collectionId = request.parameters.get("CollectionId")
        sourceId = longId or (f"{collectionId}:{itemId.rpartition(':')[2]}" if collectionId and itemId else itemId)
    if not message:
        return failure(STATUS_INVALID_CONTENT)

    sent: List[str] = []
    sending: Dict[str, float] = {}
    retrySince: Optional[float] = None
    if clientId:
        sent = loads(await services.store.load(request.user, request.deviceId, SENT_IDS)) or []
        sending = loads(await services.store.load(request.user, request.deviceId, SENDING)) or {}
        retrySince = sending.get(clientId)
        if clientId in sent:
            log.info(
                "{user} device {device} repeats {command} {clientId}: not sent again",
                user=request.user, device=request.deviceId, command=command, clientId=clientId,
            )
            return failure(STATUS_PREVIOUSLY_SENT)

    mailbox = await services.mailbox(request.user)
    original = None
    sourceIds = None
    if command != "SendMail":
        sourceIds = splitServerId(sourceId)
        if sourceIds is None:
            return failure(STATUS_ITEM_NOT_FOUND)
        try:
            original = await mailbox.message(*sourceIds)
        except (NoSuchFolder, NoSuchMessage):
            return failure(STATUS_ITEM_NOT_FOUND)
        if not replaceMime:
            message = mail.quoteForReply(original, message, forward=command == "SmartForward")

    address = services.address(request.user)
    now = services.clock.seconds()
    stableId = f"{request.user}\0{request.deviceId}\0{clientId}" if clientId else ""
    message = addMissingHeaders(message, address.rpartition("@")[2] or "localhost", now, stableId)
    summary = mail.summary(message)
    recipients = summary.recipients
    if not recipients:
        return failure(STATUS_NO_RECIPIENT)
    if services.submission is None:
        return failure(STATUS_SUBMISSION_FAILED)
    if retrySince is not None:
        log.info(
            "{user} device {device} repeats {command} {clientId}, begun before a crash: finishing it",
            user=request.user, device=request.deviceId, command=command, clientId=clientId,
        )
    elif clientId:
        # Durably, before anything leaves: a crash from here on is found by
        # the device's repeat, which then skips what was already done.
        sending[clientId] = now
        sending = dict(sorted(sending.items(), key=lambda kv: kv[1])[-SENDING_MEMORY:])
        await services.store.save(request.user, request.deviceId, {SENDING: dumps(sending)})
    since = None if retrySince is None else retrySince - ARRIVAL_SLACK
    try:
        await services.submission.submit(request.user, address, recipients, mail.stripBcc(message), since)
    except Exception as e:
        # The submission's errors say whether retrying could help.
        permanent = getattr(e, "permanent", True)
        log.warn(
            "{command} from {user} to {count} recipients failed: {reason}",
            command=command, user=request.user, count=len(recipients), reason=str(e),
        )
        return failure(STATUS_SUBMISSION_FAILED if permanent else STATUS_SERVER_ERROR)
    log.info("{user} sent mail to {count} recipients", user=request.user, count=len(recipients))

    try:
        if saveInSent:
            sentFolder = await folderOfType(mailbox, FolderType.SENT)
            if since is None or summary.messageId is None or not await findByMessageId(
                mailbox, sentFolder.id, summary.messageId, since
            ):
                # The Sent copy keeps Bcc: the sender should see whom they told.
                await mailbox.append(sentFolder.id, message, [Flag.SEEN])
        if command == "SmartReply" and sourceIds is not None:
            info = {i.uid: i for i in await mailbox.messages(sourceIds[0])}.get(sourceIds[1])
            if info is not None:
                await mailbox.setFlags(sourceIds[0], sourceIds[1], sorted(set(info.flags) | {Flag.ANSWERED}))
    except (MailboxError, LookupError):
        # The mail left; failing now would make the phone send it again.
        log.failure("after sending for {user}", user=request.user)
    if clientId:
        sending.pop(clientId, None)
        sent = (sent + [clientId])[-SENT_ID_MEMORY:]
        await services.store.save(request.user, request.deviceId, {SENT_IDS: dumps(sent), SENDING: dumps(sending)})
    return Response(200, b"")
