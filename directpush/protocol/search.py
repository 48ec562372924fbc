# -*- test-case-name: tests.test_commands -*-
"""
Search (mailbox and GAL), Find (16.1) and ResolveRecipients
(MS-ASCMD 2.2.1.16, 2.2.1.2, 2.2.1.15).

Mailbox searches read messages; to keep a search from reading a whole
large mailbox they look at the most recent L{SCAN_LIMIT} messages of the
folders searched.
"""

from __future__ import annotations

import datetime
from typing import Any, List, Optional, Tuple

from twisted.logger import Logger

from .. import wbxml
from ..interfaces import IMailbox
from ..model import Flag, Folder, MailboxError, MessageInfo
from ..wbxml import E
from . import mail
from .core import Services, folderById, folderIsMail
from .render import jobFor
from .dispatch import Response, wbxmlResponse
from .request import EASRequest

log = Logger()

SCAN_LIMIT = 5000
DEFAULT_RANGE = (0, 99)
MAX_RESULTS = 100


def _range(text: Optional[str]) -> Optional[Tuple[int, int]]:
    if text is None:
        return DEFAULT_RANGE
    start, sep, end = text.partition("-")
    if not sep or not start.isdigit() or not end.isdigit() or int(start) > int(end):
        return None
    return int(start), min(int(end), int(start) + MAX_RESULTS - 1)


def _date(text: Optional[str]) -> Optional[float]:
    if not text:
        return None
    try:
        return datetime.datetime.strptime(text.rstrip("Z")[:19], "%Y-%m-%dT%H:%M:%S").replace(
            tzinfo=datetime.timezone.utc
        ).timestamp()
    except ValueError:
        return None


async def _matches(
    mailbox: IMailbox,
    folders: List[Folder],
    words: List[str],
    after: Optional[float],
    before: Optional[float],
) -> List[Tuple[Folder, MessageInfo, bytes]]:
    """
    The messages of C{folders} matching every word (subject, addresses,
    text) and the date bounds, newest first.
    """
    candidates: List[Tuple[Folder, MessageInfo]] = []
    for folder in folders:
        try:
            candidates.extend((folder, info) for info in await mailbox.messages(folder.id))
        except MailboxError:
            continue
    candidates = [
        (f, i)
        for f, i in candidates
        if (after is None or i.received > after) and (before is None or i.received < before)
    ]
    candidates.sort(key=lambda pair: pair[1].received, reverse=True)
    found = []
    for folder, info in candidates[:SCAN_LIMIT]:
        try:
            raw = await mailbox.message(folder.id, info.uid)
        except MailboxError:
            continue
        if words:
            summary = mail.summary(raw)
            haystack = " ".join(
                [summary.subject or "", summary.sender or "", " ".join(summary.recipients), mail.plainText(raw)]
            ).lower()
            if not all(word in haystack for word in words):
                continue
        found.append((folder, info, raw))
    return found


async def search(
    services: Services, request: EASRequest, document: Optional[wbxml.Element], body: bytes
) -> Response:
    if document is None or document.qname != "Search:Search":
        return wbxmlResponse(E("Search:Search", E("Status", "1"), E("Response", E("Store", E("Status", "2")))))
    store = document.find("Store")
    name = (store.findtext("Name") or "").lower() if store is not None else ""
    answer = E("Search:Search", E("Status", "1"))
    result = E("Search:Store")
    answer.add("Response", result)
    wanted = _range(store.findtext("Options/Range") if store is not None else None)
    if store is None or wanted is None:
        result.add("Status", "2")
        return wbxmlResponse(answer)
    if name == "gal":
        query = store.findtext("Query") or ""
        people = await services.directory.lookup(query, wanted[1] + 1) if services.directory and query else []
        page = people[wanted[0] : wanted[1] + 1]
        result.add("Status", "1")
        for person in page:
            result.add(
                "Result",
                E(
                    "Properties",
                    E("Gal:DisplayName", person["name"]),
                    E("Gal:EmailAddress", person["address"]),
                    E("Gal:Alias", person["address"].split("@")[0]),
                ),
            )
        if page:
            result.add("Range", f"{wanted[0]}-{wanted[0] + len(page) - 1}")
        result.add("Total", str(len(people)))
        return wbxmlResponse(answer)
    if name != "mailbox":
        result.add("Status", "3")
        return wbxmlResponse(answer)

    query = store.find("Query/And") or store.find("Query")
    if query is None:
        result.add("Status", "2")
        return wbxmlResponse(answer)
    mailbox = await services.mailbox(request.user)
    folders = await folderById(mailbox)
    collectionIds = [c.text for c in query.findall("AirSync:CollectionId")]
    if any(c not in folders for c in collectionIds):
        result.add("Status", "2")
        return wbxmlResponse(answer)
    scope = [folders[c] for c in collectionIds] if collectionIds else [f for f in folders.values() if folderIsMail(f)]
    words = (query.findtext("FreeText") or "").lower().split()
    after = _date(query.findtext("GreaterThan/Value"))
    before = _date(query.findtext("LessThan/Value"))
    found = await _matches(mailbox, scope, words, after, before)
    options = mail.parseOptions(_bodyOptions(store.find("Options")), version=request.version)
    page = found[wanted[0] : wanted[1] + 1]
    result.add("Status", "1")
    rendered = await services.render([jobFor(raw, info, folder.id, options) for folder, info, raw in page])
    for (folder, info, raw), data in zip(page, rendered):
        result.add(
            "Result",
            E("AirSync:Class", "Email"),
            E("LongId", f"{folder.id}:{info.uid}"),
            E("AirSync:CollectionId", folder.id),
            E("Properties", *data.children),
        )
    if page:
        result.add("Range", f"{wanted[0]}-{wanted[0] + len(page) - 1}")
    result.add("Total", str(len(found)))
    return wbxmlResponse(answer)


def _bodyOptions(options: Optional[wbxml.Element]) -> Optional[wbxml.Element]:
    if options is None:
        return None
    out = E("AirSync:Options")
    for child in options.children:
        if child.ns == "AirSyncBase" or child.name == "MIMESupport":
            out.append(child)
    return out


async def find(
    services: Services, request: EASRequest, document: Optional[wbxml.Element], body: bytes
) -> Response:
    if document is None or document.qname != "Find:Find":
        return wbxmlResponse(E("Find:Find", E("Status", "2")))
    execute = document.find("ExecuteSearch")
    criterion = None
    if execute is not None:
        criterion = execute.find("MailBoxSearchCriterion") or execute.find("GalSearchCriterion")
    wanted = _range(criterion.findtext("Options/Range") if criterion is not None else None)
    if criterion is None or wanted is None:
        return wbxmlResponse(E("Find:Find", E("Status", "2")))
    response = E("Find:Response", E("ItemOperations:Store", "Mailbox" if criterion.name.startswith("Mail") else "GAL"))
    answer = E("Find:Find", E("Status", "1"), response)
    words = (criterion.findtext("Query/FreeText") or "").lower().split()
    if criterion.name != "MailBoxSearchCriterion":
        people = await services.directory.lookup(" ".join(words), wanted[1] + 1) if services.directory and words else []
        page = people[wanted[0] : wanted[1] + 1]
        response.add("Status", "1")
        for person in page:
            response.add(
                "Result",
                E("Properties", E("Gal:DisplayName", person["name"]), E("Gal:EmailAddress", person["address"])),
            )
        _rangeAndTotal(response, wanted, len(page), len(people))
        return wbxmlResponse(answer)
    mailbox = await services.mailbox(request.user)
    folders = await folderById(mailbox)
    collectionId = criterion.findtext("Query/AirSync:CollectionId")
    if collectionId is not None and collectionId not in folders:
        response.add("Status", "3")
        return wbxmlResponse(answer)
    if collectionId is not None:
        scope = [folders[collectionId]]
        if criterion.find("Options/DeepTraversal") is not None:
            scope += _descendants(folders, collectionId)
    else:
        scope = [f for f in folders.values() if folderIsMail(f)]
    found = await _matches(mailbox, scope, words, None, None)
    page = found[wanted[0] : wanted[1] + 1]
    response.add("Status", "1")
    for folder, info, raw in page:
        response.add(
            "Result",
            E("AirSync:Class", "Email"),
            E("AirSync:ServerId", f"{folder.id}:{info.uid}"),
            E("AirSync:CollectionId", folder.id),
            E("Properties", *_findProperties(raw, info)),
        )
    _rangeAndTotal(response, wanted, len(page), len(found))
    return wbxmlResponse(answer)


def _descendants(folders: dict, folderId: str) -> List[Folder]:
    out: List[Folder] = []
    todo = [folderId]
    while todo:
        parent = todo.pop()
        for f in folders.values():
            if f.parentId == parent:
                out.append(f)
                todo.append(f.id)
    return out


def _rangeAndTotal(response: wbxml.Element, wanted: Tuple[int, int], count: int, total: int) -> None:
    if count:
        response.add("Range", f"{wanted[0]}-{wanted[0] + count - 1}")
    response.add("Total", str(total))


def _findProperties(raw: bytes, info: MessageInfo) -> List[wbxml.Element]:
    """
    The Find properties of a message (MS-ASCMD 2.2.3.139.1), in order.
    """
    data = mail.applicationData(
        raw,
        read=Flag.SEEN in info.flags,
        flagged=False,
        answered=False,
        received=info.received,
        options=mail.parseOptions(None, version="16.1"),
        fileReferencePrefix="x:x",
        includeBody=False,
    )
    summary = mail.summary(raw)
    props = [
        E("Email:Subject", data.findtext("Email:Subject") or ""),
        E("Email:DateReceived", data.findtext("Email:DateReceived") or ""),
        E("Email:DisplayTo", data.findtext("Email:DisplayTo") or ""),
        E("Find:DisplayCc", data.findtext("Email:Cc") or ""),
        E("Find:DisplayBcc", ""),
        E("Email:Importance", data.findtext("Email:Importance") or "1"),
        E("Email:Read", "1" if Flag.SEEN in info.flags else "0"),
        E("Email2:IsDraft", "1" if Flag.DRAFT in info.flags else "0"),
        E("Find:Preview", " ".join(mail.plainText(raw).split())[:255]),
        E("Find:HasAttachments", "1" if mail.attachmentParts(raw) else "0"),
        E("Email:From", data.findtext("Email:From") or (summary.sender or "")),
    ]
    return props


async def resolveRecipients(
    services: Services, request: EASRequest, document: Optional[wbxml.Element], body: bytes
) -> Response:
    if document is None or document.qname != "ResolveRecipients:ResolveRecipients":
        return wbxmlResponse(E("ResolveRecipients:ResolveRecipients", E("Status", "5")))
    names = [to.text or "" for to in document.findall("To")]
    if not names or len(names) > 100:
        return wbxmlResponse(E("ResolveRecipients:ResolveRecipients", E("Status", "5")))
    limitText = document.findtext("Options/MaxAmbiguousRecipients")
    limit = int(limitText) if limitText and limitText.isdigit() else 20
    answer = E("ResolveRecipients:ResolveRecipients", E("Status", "1"))
    for name in names:
        people: List[Any] = []
        if services.directory is not None and name:
            people = await services.directory.lookup(name, max(limit, 1) + 1)
        exact = [p for p in people if p["address"].lower() == name.lower()]
        if exact:
            people, status = exact[:1], "1"
        elif len(people) == 1:
            status = "1"
        elif people:
            status = "2" if len(people) <= limit else "3"
            people = people[:limit]
        else:
            status = "4"
        response = answer.add("Response", E("To", name), E("Status", status), E("RecipientCount", str(len(people))))
        for person in people:
            response.add(
                "Recipient",
                E("Type", "1"),
                E("DisplayName", person["name"]),
                E("EmailAddress", person["address"]),
            )
    return wbxmlResponse(answer)
