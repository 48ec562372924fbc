# -*- test-case-name: tests.test_sync -*-
"""
Sync (MS-ASCMD 2.2.1.21) for mail collections.

Per (user, device, collection) the state (key C{sync:<collection>}) holds
the current key and the items the device has at that key (uid -> flag
bits, see L{itemState}; stored packed, see L{PACKED}), and the previous key with the C{Responses} it
produced and what tells the items after that request's client commands
from the current ones (C{undo}: uid -> bits then, or null for an item the
device did not have). A device that lost an answer repeats the previous
key: the answer is rebuilt from there, and its client commands are not
applied again (digest §5.5).

The undo map is as big as one answer, not as the folder: a folder's whole
item map is read, changed in place and written once per Sync, never
copied. States written before the undo map (items as C{[read, flagged]}
lists, the previous items in full) are still read.
"""

from __future__ import annotations

import base64
import heapq
from typing import Any, AsyncIterator, Dict, FrozenSet, List, MutableMapping, Optional, Sequence, Set, Tuple

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .. import wbxml
from ..interfaces import IMailbox, IMessagePages
from ..model import Flag, Folder, FolderType, Listing, MailboxError, MessageInfo, NoSuchMessage, listingRows
from ..wbxml import E
from . import mail
from .compose import addMissingHeaders
from .render import RenderJob, jobFor
from .core import Services, dumps, folderById, loads, newKey, nextKey
from .dispatch import Response, wbxmlResponse
from .itemmap import ItemMap
from .request import EASRequest

log = Logger()

SYNC_CACHE = "synccache"
DEFAULT_WINDOW = 100
MAX_WINDOW = 512
#: Messages read from the backend in one call while rendering a window.
READ_CHUNK = 128

# Sync statuses (MS-ASCMD 2.2.3.177.17).
OK = "1"
BAD_KEY = "3"
PROTOCOL_ERROR = "4"
SERVER_ERROR = "5"
CONVERSION_ERROR = "6"
NOT_FOUND = "8"
HIERARCHY_CHANGED = "12"
INCOMPLETE = "13"
BAD_WAIT = "14"

DAY = 24 * 60 * 60
#: FilterType -> the age of the oldest message in the window (digest §5.3).
FILTER_WINDOWS = {1: DAY, 2: 3 * DAY, 3: 7 * DAY, 4: 14 * DAY, 5: 31 * DAY, 6: 92 * DAY, 7: 183 * DAY}

Items = MutableMapping[str, Any]

#: Bits of an item's state as the device knows it.
READ = 1
FLAGGED = 2


def itemState(info: MessageInfo) -> int:
    """
    The state of an item the device is told about: L{READ} | L{FLAGGED}
    bits (small ints, which Python shares: an item costs its uid only).
    """
    return _flagBits(info.flags)


def _bits(value: Any) -> int:
    """
    An item's state as stored: bits, or the C{[read, flagged]} list of
    states written before bits.
    """
    if type(value) is int:
        return value
    return (READ if value[0] else 0) | (FLAGGED if value[1] else 0)


def _upgrade(items: Items) -> Items:
    """
    C{items} with every value as bits (in place).
    """
    for uid, value in items.items():
        if type(value) is not int:
            items[uid] = _bits(value)
    return items


def stateKey(collectionId: str) -> str:
    return f"sync:{collectionId}"


#: The stored form of a state's items: flag bits (as a string) -> the
#: uids with those bits, comma-separated. Uids never hold a comma
#: (L{directpush.model.ID_PATTERN}).
PACKED = "itemsByState"
#: With L{PACKED}, the numeric uids as L{ItemMap.stored} gives them (then
#: L{PACKED} holds only the others).
DENSE = "itemsDense"


def _packItems(items: Items) -> Dict[str, str]:
    """
    C{items} as a few long strings: a big folder's map is written as a
    handful of JSON strings built from the uids it already holds, where
    JSON of the map itself makes a small string for every key and value.
    """
    return {str(bits): ",".join([uid for uid, value in items.items() if value == bits]) for bits in set(items.values())}


def loadState(raw: Optional[bytes]) -> Optional[Dict[str, Any]]:
    """
    A collection's stored state (L{stateKey}), with its C{items} as a map
    whichever form they were stored in; None if there is none, or if its
    items cannot be read (the device then starts over, as for a state
    that is gone, rather than syncing from a wrong map).
    """
    state = loads(raw)
    if isinstance(state, dict) and PACKED in state:
        packed = state.pop(PACKED)
        dense = state.pop(DENSE, None)
        try:
            state["items"] = ItemMap.fromPacked(packed) if dense is None else ItemMap.fromStored(dense, packed)
        except (ValueError, TypeError, AttributeError) as e:
            log.error("unreadable sync state dropped: {error}", error=e)
            return None
    return state


def dumpState(state: Dict[str, Any]) -> bytes:
    """
    A collection's state as stored: its items packed (L{PACKED}, and
    L{DENSE} for an L{ItemMap}).
    """
    stored = dict(state)
    items = stored.pop("items")
    _upgrade(items)
    if isinstance(items, ItemMap):
        stored[DENSE], stored[PACKED] = items.stored()
    else:
        stored[PACKED] = _packItems(items)
    return dumps(stored, sortKeys=False)


@attrs.define
class CollectionRequest:
    """
    One collection of a Sync request, parsed.
    """

    syncKey: str
    collectionId: str
    deletesAsMoves: bool = True
    getChanges: bool = True
    windowSize: int = DEFAULT_WINDOW
    options: Optional[wbxml.Element] = None
    commands: List[wbxml.Element] = attrs.field(factory=list)

    @classmethod
    def parse(cls, element: wbxml.Element) -> Optional["CollectionRequest"]:
        key = element.findtext("SyncKey")
        collectionId = element.findtext("CollectionId")
        if not key or not collectionId or len(key) > 64 or len(collectionId) > 64:
            return None
        request = cls(key, collectionId)
        dam = element.find("DeletesAsMoves")
        if dam is not None:
            request.deletesAsMoves = dam.text in (None, "", "1")
        changes = element.find("GetChanges")
        if changes is not None:
            request.getChanges = changes.text in (None, "", "1")
        window = element.findtext("WindowSize")
        if window is not None:
            if not window.isdigit():
                return None
            size = int(window)
            request.windowSize = MAX_WINDOW if size == 0 or size > MAX_WINDOW else size
        request.options = element.find("Options")
        commands = element.find("Commands")
        if commands is not None:
            request.commands = list(commands.children)
        return request

    def element(self) -> wbxml.Element:
        """
        Back to a request element, for the cache of empty and partial Syncs.
        """
        el = E("AirSync:Collection", E("SyncKey", self.syncKey), E("CollectionId", self.collectionId))
        if not self.deletesAsMoves:
            el.add("DeletesAsMoves", "0")
        if not self.getChanges:
            el.add("GetChanges", "0")
        el.add("WindowSize", str(self.windowSize))
        if self.options is not None:
            el.append(self.options)
        return el


def filterType(options: Optional[wbxml.Element]) -> int:
    value = options.findtext("FilterType", "0") if options is not None else "0"
    return int(value) if value.isdigit() and int(value) in FILTER_WINDOWS else 0


#: Messages per page when a mailbox lists a folder a page at a time.
PAGE_SIZE = 4096


async def _pages(mailbox: IMailbox, folderId: str) -> AsyncIterator[Sequence[MessageInfo]]:
    """
    The folder's listing, a page at a time where the mailbox can (see
    L{IMessagePages}), else whole.
    """
    if not IMessagePages.providedBy(mailbox):
        yield await mailbox.messages(folderId)
        return
    after = 0
    while True:
        page = await IMessagePages(mailbox).messagesAfter(folderId, after, PAGE_SIZE)
        yield page
        if len(page) < PAGE_SIZE:
            return
        after = int(page[-1].uid)


class _Present:
    """
    Which of a device's items a walk of the folder met: a byte per
    numeric uid (as the device's L{ItemMap} keeps), a set for the rest.
    """

    def __init__(self, known: int) -> None:
        self._numbers = bytearray()
        # A uid far beyond the folder's count would make the bytes huge.
        self._most = 64 * known + 4096
        self._others: Set[str] = set()

    def _number(self, uid: str) -> int:
        # Only a uid that is its number's own spelling ("7", not "007").
        if uid.isdigit() and len(uid) < 20 and (uid[0] != "0" or uid == "0"):
            number = int(uid)
            if number < self._most:
                return number
        return -1

    def add(self, uid: str) -> None:
        number = self._number(uid)
        if number < 0:
            self._others.add(uid)
            return
        if number >= len(self._numbers):
            self._numbers.extend(bytes(max(number + 1 - len(self._numbers), len(self._numbers) // 2)))
        self._numbers[number] = 1

    def __contains__(self, uid: str) -> bool:
        number = self._number(uid)
        if number < 0:
            return uid in self._others
        return number < len(self._numbers) and bool(self._numbers[number])


async def pendingChanges(
    mailbox: IMailbox,
    folderId: str,
    items: Items,
    filterTypeValue: int,
    now: float,
    limit: Optional[int] = None,
) -> Tuple[List[Tuple[str, str, Optional[MessageInfo]]], int]:
    """
    What the device at C{items} lacks: a list of (kind, uid, info) with
    kind C{Change}, C{Delete}, C{SoftDelete} or C{Add} (newest first),
    and how many there are in all.

    @param limit: list no more than this many (the rest is only
        counted): a window of a big folder's initial Sync need not sort,
        nor hold, every message that is not yet on the device.
    """
    window = FILTER_WINDOWS.get(filterTypeValue)
    oldest = now - window if window else None
    changes: List[Tuple[str, str, Optional[MessageInfo]]] = []
    # The adds by (received, -position), newest first once sorted; with a
    # limit, only the newest C{limit} of them are held (a min-heap), each
    # with what makes its MessageInfo.
    adds: List[Tuple[float, int, str, FrozenSet[Flag], int]] = []
    addCount = 0
    present = _Present(len(items))
    known = 0
    position = 0
    async for page in _pages(mailbox, folderId):
        sizeOf = page.size if isinstance(page, Listing) else lambda index: page[index].size
        for index, uid, flags, received in listingRows(page):
            position += 1
            inWindow = oldest is None or received >= oldest
            state = items.get(uid)
            if state is None:
                if inWindow:
                    addCount += 1
                    if limit is None or len(adds) < limit:
                        heapq.heappush(adds, (received, -position, uid, flags, sizeOf(index)))
                    elif adds and (received, -position) > adds[0][:2]:
                        heapq.heapreplace(adds, (received, -position, uid, flags, sizeOf(index)))
                continue
            known += 1
            present.add(uid)
            if not inWindow:
                changes.append(("SoftDelete", uid, page[index]))
            elif _bits(state) != _flagBits(flags):
                changes.append(("Change", uid, page[index]))
    if known < len(items):
        # Some item the device has is gone.
        changes.extend(("Delete", uid, None) for uid in items if uid not in present)
    del present
    total = len(changes) + addCount
    adds.sort(reverse=True)
    if limit is not None:
        del adds[max(0, limit - len(changes)) :]
    for received, _, uid, flags, size in adds:
        changes.append(("Add", uid, MessageInfo(uid, flags, received, size)))
    return changes, total


def _flagBits(flags: FrozenSet[Flag]) -> int:
    return (READ if Flag.SEEN in flags else 0) | (FLAGGED if Flag.FLAGGED in flags else 0)


def validateWait(document: wbxml.Element) -> Optional[wbxml.Element]:
    """
    A Sync-level error for bad Wait/HeartbeatInterval values, or None.
    """
    wait = document.findtext("Wait")
    heartbeat = document.findtext("HeartbeatInterval")
    if wait is not None and heartbeat is not None:
        return E("AirSync:Sync", E("Status", PROTOCOL_ERROR))
    if wait is not None and (not wait.isdigit() or not 1 <= int(wait) <= 59):
        return E("AirSync:Sync", E("Status", BAD_WAIT), E("Limit", "59" if wait.isdigit() and int(wait) > 59 else "1"))
    if heartbeat is not None and (not heartbeat.isdigit() or not 60 <= int(heartbeat) <= 3540):
        high = heartbeat.isdigit() and int(heartbeat) > 3540
        return E("AirSync:Sync", E("Status", BAD_WAIT), E("Limit", "3540" if high else "60"))
    return None


Hang = Tuple[FrozenSet[str], int]


async def sync(
    services: Services, request: EASRequest, document: Optional[wbxml.Element], body: bytes
) -> Response:
    """
    Answer a Sync: full, empty (cached request) or partial; with C{Wait}
    or C{HeartbeatInterval} (12.1+), hold an answer that has nothing to
    say until a collection changes or the interval ends.
    """
    arrived = services.clock.seconds()
    services.supersede(request)
    async with services.deviceLock(request):
        response, hang = await _syncOnce(services, request, document, body)
    if hang is None or services.hub is None:
        return response
    collectionIds, seconds = hang
    # The operator's --max-heartbeat holds for hanging Syncs as for Pings:
    # it is set below the idle timeouts of the networks in between. An
    # empty answer before the device's interval is harmless.
    seconds = min(seconds, services.maxHeartbeat)
    from .ping import answerMargin, changedFolders

    changed = await services.hub.wait(
        request.user,
        request.deviceId,
        collectionIds,
        seconds - answerMargin(seconds) - (services.clock.seconds() - arrived),
        lambda touched: changedFolders(services, request, touched),
    )
    if not changed:
        # Interval over, or superseded: the empty answer (MS-ASCMD 2.2.1.21).
        return response
    async with services.deviceLock(request):
        response, _ = await _syncOnce(services, request, document, body)
    return response


async def _syncOnce(
    services: Services, request: EASRequest, document: Optional[wbxml.Element], body: bytes
) -> Tuple[Response, Optional[Hang]]:
    """
    One pass of a Sync. Also says what to wait for when the answer is
    empty and the request asked to hang.
    """
    user, device = request.user, request.deviceId
    cached = loads(await services.store.load(user, device, SYNC_CACHE))
    if document is None:
        if body or not cached:
            return _now(wbxmlResponse(E("AirSync:Sync", E("Status", INCOMPLETE))))
        document = wbxml.decode(base64.b64decode(cached["request"]))
    elif document.qname != "AirSync:Sync":
        return _now(wbxmlResponse(E("AirSync:Sync", E("Status", PROTOCOL_ERROR))))
    error = validateWait(document)
    if error is not None:
        return _now(wbxmlResponse(error))

    collections: List[CollectionRequest] = []
    for element in document.findall("Collections/Collection"):
        parsed = CollectionRequest.parse(element)
        if parsed is None:
            return _now(wbxmlResponse(E("AirSync:Sync", E("Status", PROTOCOL_ERROR))))
        collections.append(parsed)
    if document.find("Partial") is not None:
        if not cached:
            return _now(wbxmlResponse(E("AirSync:Sync", E("Status", INCOMPLETE))))
        listed = {c.collectionId for c in collections}
        known = cached.get("all", cached["request"])
        for element in wbxml.decode(base64.b64decode(known)).findall("Collections/Collection"):
            parsed = CollectionRequest.parse(element)
            if parsed is not None and parsed.collectionId not in listed:
                collections.append(parsed)
    if not collections:
        return _now(wbxmlResponse(E("AirSync:Sync", E("Status", INCOMPLETE if cached is None else PROTOCOL_ERROR))))

    budget = MAX_WINDOW
    globalWindow = document.findtext("WindowSize")
    if globalWindow is not None and globalWindow.isdigit() and 0 < int(globalWindow) < MAX_WINDOW:
        budget = int(globalWindow)

    mailbox = await services.mailbox(user)
    folders = await folderById(mailbox)
    answers: List[wbxml.Element] = []
    updates: Dict[str, Optional[bytes]] = {}
    anything = False
    now = services.clock.seconds()
    for collection in collections:
        answer, state, budget, changed = await _syncCollection(
            services, request, mailbox, folders, collection, budget, now
        )
        answers.append(answer)
        anything = anything or changed
        if state is not None:
            updates[stateKey(collection.collectionId)] = dumpState(state)
            # The cache remembers each collection at its newest key.
            collection.syncKey = state["key"]
            collection.commands = []
    # Two caches: the request as made (an empty Sync repeats it) and every
    # collection the device syncs at its newest key (a Partial adds to it).
    cache = E("AirSync:Sync", E("Collections", *(c.element() for c in collections)))
    for name in ("Wait", "HeartbeatInterval", "WindowSize"):
        if document.findtext(name) is not None:
            cache.add(name, document.findtext(name) or "")
    every = {c.collectionId: c.element() for c in _cachedCollections(cached, "all")}
    every.update((c.collectionId, c.element()) for c in collections)
    updates[SYNC_CACHE] = dumps(
        {
            "request": base64.b64encode(wbxml.encode(cache)).decode("ascii"),
            "all": base64.b64encode(
                wbxml.encode(E("AirSync:Sync", E("Collections", *every.values())))
            ).decode("ascii"),
        }
    )
    # Durable before the answer leaves: a crash after this point loses
    # nothing the device was told.
    await services.store.save(user, device, updates)
    if not anything and request.versionNumber >= 12.1:
        return Response(200, b""), _hang(document, collections)
    return _now(wbxmlResponse(E("AirSync:Sync", E("Collections", *answers))))


async def _render(
    services: Services,
    mailbox: IMailbox,
    folder: Folder,
    infos: List[MessageInfo],
    options: mail.MailOptions,
    ready: Optional[Dict[RenderJob, wbxml.Element]] = None,
) -> Dict[str, wbxml.Element]:
    """
    The ApplicationData of each message by uid; messages that vanished
    meanwhile are left out. Messages are read a chunk at a time, each
    chunk in one backend call, and each chunk goes to the renderer as
    soon as it is read, so that rendering overlaps the next read.

    @param ready: messages already rendered (ahead, see L{_renderAhead}),
        by the very job that would render them: one whose content, flags
        or options changed since is rendered again.
    """
    pending: List[Tuple[List[str], "Deferred[List[wbxml.Element]]"]] = []
    rendered: Dict[str, wbxml.Element] = {}
    try:
        for start in range(0, len(infos), READ_CHUNK):
            chunk = infos[start : start + READ_CHUNK]
            raws = await mailbox.messagesData(folder.id, [info.uid for info in chunk])
            jobs, uids = [], []
            for info in chunk:
                raw = raws.get(info.uid)
                if raw is not None:
                    job = jobFor(raw, info, folder.id, options)
                    done = ready.pop(job, None) if ready else None
                    if done is not None:
                        rendered[info.uid] = done
                    else:
                        jobs.append(job)
                        uids.append(info.uid)
            del raws
            if jobs:
                pending.append((uids, services.render(jobs)))
    except BaseException:
        for _, d in pending:
            # Their outcome no longer matters; do not log it as unhandled.
            d.addErrback(lambda _: None)
        raise
    for uids, d in pending:
        rendered.update(zip(uids, await d))
    return rendered


#: How long what was rendered ahead waits for the device's next Sync.
AHEAD_SECONDS = 60.0


@attrs.define
class _Ahead:
    """
    The next window of one device's paged Sync of one folder, being
    rendered ahead: a Deferred per chunk, firing with its elements by job
    (nothing, if rendering failed).
    """

    chunks: List["Deferred[Dict[RenderJob, wbxml.Element]]"]
    expiry: Any = None


def _dropAhead(services: Services, key: Tuple[str, str, str]) -> Optional[_Ahead]:
    ahead: Optional[_Ahead] = services.aheads.pop(key, None)
    if ahead is not None and ahead.expiry is not None and ahead.expiry.active():
        ahead.expiry.cancel()
    return ahead


async def _takeAhead(services: Services, key: Tuple[str, str, str]) -> Dict[RenderJob, wbxml.Element]:
    """
    What was rendered ahead for C{key}, waiting for what is still being
    rendered (it was started a round trip ago); forgotten either way.
    """
    ahead = _dropAhead(services, key)
    ready: Dict[RenderJob, wbxml.Element] = {}
    if ahead is not None:
        for d in list(ahead.chunks):
            ready.update(await d)
    return ready


async def _renderAhead(
    services: Services, mailbox: IMailbox, folder: Folder, key: Tuple[str, str, str], infos: List[MessageInfo], options: mail.MailOptions
) -> None:
    """
    Read and render C{infos} for the device's next Sync, while it reads
    this answer. Stops reading when that Sync has come (or another
    rendering ahead replaced this one).
    """
    _dropAhead(services, key)
    ahead = _Ahead([])
    ahead.expiry = services.clock.callLater(AHEAD_SECONDS, _dropAhead, services, key)
    services.aheads[key] = ahead

    def forget(failure: Any) -> Dict[RenderJob, wbxml.Element]:
        log.failure("rendering ahead failed; the next Sync renders again", failure=failure)
        return {}

    for start in range(0, len(infos), READ_CHUNK):
        if services.aheads.get(key) is not ahead:
            return
        chunk = infos[start : start + READ_CHUNK]
        try:
            raws = await mailbox.messagesData(folder.id, [info.uid for info in chunk])
        except MailboxError:
            return
        if services.aheads.get(key) is not ahead:
            return  # the Sync came while this chunk was read: it renders its own
        jobs = [jobFor(raws[info.uid], info, folder.id, options) for info in chunk if info.uid in raws]
        del raws
        if jobs:
            d = services.render(jobs)
            d.addCallback(lambda elements, jobs=jobs: dict(zip(jobs, elements)))
            d.addErrback(forget)
            ahead.chunks.append(d)


def _now(response: Response) -> Tuple[Response, None]:
    return response, None


def _hang(document: wbxml.Element, collections: List[CollectionRequest]) -> Optional[Hang]:
    """
    What an empty answer should wait for, if the request asked to hang and
    carried no client changes (those are answered at once).
    """
    wait, heartbeat = document.findtext("Wait"), document.findtext("HeartbeatInterval")
    if any(c.commands for c in collections):
        return None
    if wait is not None and wait.isdigit():
        seconds = int(wait) * 60
    elif heartbeat is not None and heartbeat.isdigit():
        seconds = int(heartbeat)
    else:
        return None
    return frozenset(c.collectionId for c in collections), seconds


def _cachedCollections(cached: Optional[Dict[str, Any]], which: str) -> List[CollectionRequest]:
    if not cached or which not in cached:
        return []
    elements = wbxml.decode(base64.b64decode(cached[which])).findall("Collections/Collection")
    return [c for c in (CollectionRequest.parse(e) for e in elements) if c is not None]


async def _syncCollection(
    services: Services,
    request: EASRequest,
    mailbox: IMailbox,
    folders: Dict[str, Folder],
    collection: CollectionRequest,
    budget: int,
    now: float,
) -> Tuple[wbxml.Element, Optional[Dict[str, Any]], int, bool]:
    """
    Sync one collection. Returns its answer element, its new state (None:
    unchanged), the window budget left, and whether the answer says
    anything the device must hear.
    """
    answer = E("AirSync:Collection")
    if request.versionNumber < 12.1:
        answer.add("Class", "Email")

    def failed(status: str) -> Tuple[wbxml.Element, None, int, bool]:
        answer.add("SyncKey", collection.syncKey)
        answer.add("CollectionId", collection.collectionId)
        answer.add("Status", status)
        return answer, None, budget, True

    folder = folders.get(collection.collectionId)
    if folder is None:
        return failed(HIERARCHY_CHANGED)
    stored = loadState(await services.store.load(request.user, request.deviceId, stateKey(folder.id)))
    filterValue = filterType(collection.options)

    if collection.syncKey == "0":
        state = {"key": f"{newKey()}-1", "items": ItemMap(), "filter": filterValue}
        answer.add("SyncKey", state["key"])
        answer.add("CollectionId", folder.id)
        answer.add("Status", OK)
        return answer, state, budget, True
    if stored is None:
        return failed(BAD_KEY)
    previous = stored.get("prev") or {}
    # The stored map is this request's own copy: changed in place below.
    items: Items = _upgrade(stored["items"])
    if collection.syncKey == stored["key"]:
        responses = await _applyCommands(services, request, mailbox, folders, folder, collection, items, now)
        earlier = base64.b64encode(wbxml.encode(responses)).decode("ascii") if responses is not None else None
    elif collection.syncKey == previous.get("key") and ("undo" in previous or "items" in previous):
        if "undo" in previous:
            _undo(items, previous["undo"])
        else:
            items = _upgrade(previous["items"])
        earlier = previous.get("responses")
        responses = wbxml.decode(base64.b64decode(earlier)) if earlier else None
        log.info(
            "{user} device {device} repeats key {key} of {collection}: answer rebuilt",
            user=request.user, device=request.deviceId, key=collection.syncKey, collection=folder.id,
        )
    else:
        return failed(BAD_KEY)
    del stored, previous

    # The items now are those after the request's client commands, which
    # the previous key stands for; undo says how to get back to them.
    undo: Dict[str, Optional[int]] = {}
    commands: List[wbxml.Element] = []
    more = False
    aheadKey = (request.user, request.deviceId, folder.id)
    ready = await _takeAhead(services, aheadKey) if services.renderAhead else {}
    nextAdds: List[MessageInfo] = []
    if collection.getChanges:
        window = min(collection.windowSize, budget)
        # With rendering ahead, the window after this one too.
        limit = 2 * window if services.renderAhead else window
        changes, total = await pendingChanges(mailbox, folder.id, items, filterValue, now, limit=limit)
        if total > window:
            nextAdds = [info for kind, _, info in changes[window:] if kind == "Add" and info is not None]
            changes, more = changes[:window], True
        options = mail.parseOptions(collection.options, version=request.version)
        adds = [info for kind, _, info in changes if kind == "Add" and info is not None]
        rendered = await _render(services, mailbox, folder, adds, options, ready)
        del adds, ready
        if services.renderAhead and nextAdds:
            started = Deferred.fromCoroutine(_renderAhead(services, mailbox, folder, aheadKey, nextAdds, options))
            started.addErrback(lambda f: log.failure("rendering ahead failed", failure=f))
        del nextAdds
        for kind, uid, info in changes:
            if kind in ("Delete", "SoftDelete"):
                commands.append(E(kind, E("ServerId", f"{folder.id}:{uid}")))
                if uid not in undo:
                    undo[uid] = items.get(uid)
                items.pop(uid, None)
                continue
            assert info is not None
            if kind == "Change":
                data = E(
                    "AirSync:ApplicationData",
                    E("Email:Read", str(int(Flag.SEEN in info.flags))),
                    mail.flagElement(Flag.FLAGGED in info.flags),
                )
            else:
                found = rendered.pop(uid, None)
                if found is None:
                    continue  # gone since the listing; the next Sync says so
                data = found
            commands.append(E(kind, E("ServerId", f"{folder.id}:{uid}"), data))
            if uid not in undo:
                undo[uid] = items.get(uid)
            items[uid] = itemState(info)
        budget -= len(commands)

    # Client changes applied silently still move the key: the new state
    # records them so that they are never echoed back.
    changed = bool(commands) or responses is not None or bool(collection.commands)
    key = nextKey(collection.syncKey) if changed else collection.syncKey
    answer.add("SyncKey", key)
    answer.add("CollectionId", folder.id)
    answer.add("Status", OK)
    if more:
        answer.add("MoreAvailable")
    if commands:
        answer.add("Commands", *commands)
    if responses is not None:
        answer.append(responses)
    if not changed:
        return answer, None, budget, False
    state: Dict[str, Any] = {
        "key": key,
        "items": items,
        "filter": filterValue,
        "prev": {"key": collection.syncKey, "undo": undo, "responses": earlier},
    }
    return answer, state, budget, True


def _undo(items: Items, undo: Dict[str, Any]) -> None:
    """
    Take C{items} back to the previous key's (in place).
    """
    for uid, value in undo.items():
        if value is None:
            items.pop(uid, None)
        else:
            items[uid] = _bits(value)


async def _applyCommands(
    services: Services,
    request: EASRequest,
    mailbox: IMailbox,
    folders: Dict[str, Folder],
    folder: Folder,
    collection: CollectionRequest,
    items: Items,
    now: float,
) -> Optional[wbxml.Element]:
    """
    Carry out the device's own changes, recording them in C{items} so they
    are not echoed back; return the C{Responses} element, if any.
    """
    responses = E("AirSync:Responses")
    listing: Optional[Dict[str, MessageInfo]] = None
    trash = next((f for f in folders.values() if f.type == FolderType.DELETED), None)
    options = mail.parseOptions(collection.options, version=request.version)
    for command in collection.commands:
        serverId = command.findtext("ServerId")
        uid = None
        if serverId is not None:
            folderPart, _, uid = serverId.partition(":")
            if folderPart != folder.id or not uid:
                uid = None
        if command.name == "Add":
            reply, added = await _add(mailbox, folder, command, items, request)
            responses.append(reply)
            data = command.find("ApplicationData")
            if added is not None and data is not None and data.find("Email2:Send") is not None:
                await _sendDraft(services, request, mailbox, folder, added)
            continue
        if uid is None:
            responses.add(command.name, E("ServerId", serverId or ""), E("Status", NOT_FOUND))
            continue
        if listing is None:
            listing = {i.uid: i for i in await mailbox.messages(folder.id)}
        info = listing.get(uid)
        if info is None:
            responses.add(command.name, E("ServerId", serverId), E("Status", NOT_FOUND))
            if command.name == "Delete":
                items.pop(uid, None)  # the device has dropped it already
            # After a Change or Fetch of a vanished item the device still
            # holds it: it stays in the state, so the Delete reaches it.
            continue
        try:
            if command.name == "Change":
                data = command.find("ApplicationData")
                if data is not None and _isDraftEdit(folder, data, request):
                    await mailbox.replace(folder.id, uid, mail.draftMessage(data))
                    if data.find("Email2:Send") is not None:
                        await _sendDraft(services, request, mailbox, folder, uid)
                    continue
                change = mail.parseFlagChange(data) if data is not None else {}
                flags = set(info.flags)
                # The device knows what it had plus what it changed, not
                # whatever else changed here meanwhile: that still goes to it.
                held = items.get(uid)
                known = _bits(held) if held is not None else itemState(info)
                for bit, (flag, key) in ((READ, (Flag.SEEN, "read")), (FLAGGED, (Flag.FLAGGED, "flagged"))):
                    if key in change:
                        (flags.add if change[key] else flags.discard)(flag)
                        known = known | bit if change[key] else known & ~bit
                await mailbox.setFlags(folder.id, uid, sorted(flags))
                items[uid] = known
            elif command.name == "Delete":
                if collection.deletesAsMoves and trash is not None and trash.id != folder.id:
                    await mailbox.move(folder.id, uid, trash.id)
                else:
                    await mailbox.delete(folder.id, uid)
                items.pop(uid, None)
            elif command.name == "Fetch":
                raw = await mailbox.message(folder.id, uid)
                [data] = await services.render([jobFor(raw, info, folder.id, options)])
                responses.add("Fetch", E("ServerId", serverId), E("Status", OK), data)
            else:
                responses.add(command.name, E("ServerId", serverId), E("Status", PROTOCOL_ERROR))
        except NoSuchMessage:
            responses.add(command.name, E("ServerId", serverId), E("Status", NOT_FOUND))
            if command.name == "Delete":
                items.pop(uid, None)
        except MailboxError:
            log.failure("{command} of {serverId} failed", command=command.name, serverId=serverId)
            responses.add(command.name, E("ServerId", serverId), E("Status", SERVER_ERROR))
    return responses if responses.children else None


_FLAG_FIELDS = frozenset({"Email:Read", "Email:Flag"})


def _isDraftEdit(folder: Folder, data: wbxml.Element, request: EASRequest) -> bool:
    """
    Does a Change carry a draft's new content (16.0+), not just flags?
    """
    return (
        folder.type == FolderType.DRAFTS
        and request.versionNumber >= 16.0
        and any(child.qname not in _FLAG_FIELDS for child in data.children)
    )


async def _add(
    mailbox: IMailbox, folder: Folder, command: wbxml.Element, items: Items, request: EASRequest
) -> Tuple[wbxml.Element, Optional[str]]:
    """
    A client Add: only drafts (16.0+) are mail a device creates. Returns
    the response and the new uid, if any.
    """
    clientId = command.findtext("ClientId") or ""
    data = command.find("ApplicationData")
    if folder.type != FolderType.DRAFTS or request.versionNumber < 16.0 or data is None or not clientId:
        return E("Add", E("ClientId", clientId), E("Status", CONVERSION_ERROR)), None
    raw = mail.draftMessage(data)
    uid = await mailbox.append(folder.id, raw, [Flag.DRAFT, Flag.SEEN])
    items[uid] = READ
    return E("Add", E("ClientId", clientId), E("ServerId", f"{folder.id}:{uid}"), E("Status", OK)), uid


async def _sendDraft(services: Services, request: EASRequest, mailbox: IMailbox, folder: Folder, uid: str) -> None:
    """
    Send a draft the device asked to send (C{Email2:Send}, 16.0+): submit
    it, file it in Sent, remove the draft. The draft's removal reaches the
    device with its next Sync, as Exchange does.
    """
    raw = await mailbox.message(folder.id, uid)
    address = services.address(request.user)
    raw = addMissingHeaders(raw, address.rpartition("@")[2] or "localhost", services.clock.seconds())
    recipients = mail.summary(raw).recipients
    if services.submission is None or not recipients:
        log.warn("{user}: draft {uid} cannot be sent (no recipients or no submission)", user=request.user, uid=uid)
        return
    try:
        await services.submission.submit(request.user, address, recipients, mail.stripBcc(raw))
    except Exception as e:
        # The draft stays, so the user can send it again.
        log.warn("{user}: sending draft {uid} failed: {reason}", user=request.user, uid=uid, reason=str(e))
        return
    sent = next((f for f in (await mailbox.folders()) if f.type == FolderType.SENT), None)
    if sent is not None:
        await mailbox.append(sent.id, raw, [Flag.SEEN])
    await mailbox.delete(folder.id, uid)
