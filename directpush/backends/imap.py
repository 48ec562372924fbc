# -*- test-case-name: tests.test_backend_imap,tests.test_e2e_imap -*-
"""
Mailboxes on an existing IMAP server: the bridge that gives its accounts
Direct Push.

Authentication passes through: the device's Basic credentials log in to
IMAP (L{IMAPChecker}); the password is kept in memory only, for the
user's session (reconnecting after a server restart needs it), and
dropped when the session closes after L{SESSION_IDLE} seconds without
activity. It is never written to disk or logged.

Each active user has a session of two connections, each a
L{ClientService} reconnecting with backoff on the injected clock: one for
commands (one at a time, under a lock, since most need a selected
mailbox), and, while any of the user's devices waits, one that IDLEs,
shared by all of them. With NOTIFY (RFC 5465) that one connection
watches every folder; without, it IDLEs on the Inbox and checks the
other watched folders with STATUS each time IDLE is renewed (every
L{IDLE_RENEW} seconds, inside RFC 2177's 29 minutes).

Ids: folder ids are kept in the state store (user, device C{""}, key
C{imap-folders}) as a name -> id map, so renames keep them and several
server processes agree. Message uids are C{"<UIDVALIDITY>-<UID>"}: a
UIDVALIDITY change makes every old uid vanish and every message reappear
under a new one, which the sync core handles as a reset. An edited draft
(L{IMailbox.replace}) is a new IMAP message; it keeps the uid the device
knows through a per-folder alias list in the store (C{imap-alias:<id>}).

Change detection keeps a compact per-folder cache (uid -> flags, date,
size; UIDVALIDITY, HIGHESTMODSEQ) and refreshes it with CONDSTORE's
CHANGEDSINCE and QRESYNC's VANISHED (or a UID SEARCH ALL compare), never
refetching a whole folder's overview when nothing changed.

IMAP carries a message as lines ending in CRLF: a bare LF comes back as
CRLF, and an empty message, which servers refuse, is stored as one empty
line. BINARY literals (RFC 3516) keep NUL and 8-bit bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Any, Awaitable, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, TypeVar

import attrs
from twisted.application.internet import ClientService, backoffPolicy
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import error as netError
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet import ssl
from twisted.logger import Logger
from zope.interface import implementer

from ..auth import CannotCheck, plainCredentials
from ..interfaces import IChangeNotifier, IMailbox, IMailboxBackend, IStateStore
from ..model import (
    Flag,
    Folder,
    FolderChange,
    FolderExists,
    FolderType,
    InvalidFolderName,
    MessageInfo,
    NoSuchFolder,
    NoSuchMessage,
    SpecialFolder,
)
from ..notify import LocalNotifier
from ..submit import _trustRoot, isLoopback
from ._imapclient import CommandFailed, IMAPClient, Response, decodeName, encodeName, formatSet, parseDate, text

log = Logger()
T = TypeVar("T")

#: Seconds without a request or a waiting device before a user's
#: connections close and the password is forgotten.
SESSION_IDLE = 15 * 60.0
#: How often IDLE is ended and started again (RFC 2177: before 29 minutes).
IDLE_RENEW = 25 * 60.0
#: How long the IDLE connection stays after the last watch ended, so that
#: a device's next Ping finds it ready.
WATCH_LINGER = 120.0
#: A command (or a short series) that takes longer drops its connection.
COMMAND_TIMEOUT = 120.0
#: Seconds a new connection may take from connect to ready (greeting,
#: TLS, login, and for the IDLE one its SELECT, NOTIFY and IDLE).
PREPARE_TIMEOUT = 30.0
#: Longest folder name accepted.
MAX_NAME = 200

FOLDERS_KEY = "imap-folders"
ALIAS_PREFIX = "imap-alias:"

_FLAGS = {
    b"\\SEEN": Flag.SEEN,
    b"\\FLAGGED": Flag.FLAGGED,
    b"\\ANSWERED": Flag.ANSWERED,
    b"\\DELETED": Flag.DELETED,
    b"\\DRAFT": Flag.DRAFT,
}
_IMAP_FLAGS = {
    Flag.SEEN: b"\\Seen",
    Flag.FLAGGED: b"\\Flagged",
    Flag.ANSWERED: b"\\Answered",
    Flag.DELETED: b"\\Deleted",
    Flag.DRAFT: b"\\Draft",
}
_FETCH_ITEMS = b"(UID FLAGS INTERNALDATE RFC822.SIZE)"


@attrs.frozen
class _Role:
    type: FolderType
    specialUse: Optional[bytes]
    default: str
    names: Tuple[str, ...]


#: The special folders: found by SPECIAL-USE attribute, else by name
#: (case-insensitively, first match), else created with the default name.
_ROLES = (
    _Role(FolderType.DRAFTS, b"\\DRAFTS", "Drafts", ("Drafts",)),
    _Role(FolderType.SENT, b"\\SENT", "Sent", ("Sent", "Sent Items", "Sent Messages")),
    _Role(FolderType.DELETED, b"\\TRASH", "Trash", ("Trash", "Deleted Items", "Deleted Messages")),
    _Role(FolderType.OUTBOX, None, "Outbox", ("Outbox",)),
)


def _flagsOf(value: Any) -> FrozenSet[Flag]:
    if not isinstance(value, list):
        return frozenset()
    return frozenset(_FLAGS[f.upper()] for f in value if isinstance(f, bytes) and f.upper() in _FLAGS)


def _imapFlags(flags: Sequence[Flag]) -> List[bytes]:
    return [_IMAP_FLAGS[Flag(f)] for f in sorted(set(flags))]


def _checkName(name: str) -> None:
    if (
        not name
        or len(name) > MAX_NAME
        or name.strip() != name
        or any(c in "/.\\" or c < " " or c == "\x7f" for c in name)
    ):
        raise InvalidFolderName(name)


def imapEndpoint(
    reactor: Any, description: str, allowPlaintext: bool = False, caFile: Optional[str] = None
) -> Tuple[IStreamClientEndpoint, Optional[Any]]:
    """
    The IMAP server's endpoint and what to verify a STARTTLS upgrade with.

      - C{tls:HOST:PORT}: TLS from the first byte (993), the certificate
        verified against HOST with the platform's trust store or C{caFile}.
      - C{tcp:HOST:PORT}: STARTTLS (143), verified the same way; with
        C{allowPlaintext}, to a loopback HOST only, plain IMAP.

    @raise ValueError: for a malformed or refused description.
    """
    scheme, sep, rest = description.partition(":")
    scheme = scheme.strip().lower()
    usage = "expected tls:HOST:PORT or tcp:HOST:PORT (IPv6 host in brackets)"
    host, sep2, portText = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not sep2 or scheme not in ("tls", "tcp") or not host or "=" in rest:
        raise ValueError(f"IMAP server {description!r}: {usage}")
    try:
        port = int(portText)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ValueError(f"IMAP server {description!r}: port must be a number from 1 to 65535")
    tcp = HostnameEndpoint(reactor, host, port, timeout=30)
    options = ssl.optionsForClientTLS(host, trustRoot=_trustRoot(caFile))
    if scheme == "tls":
        return wrapClientTLS(options, tcp), None
    if allowPlaintext:
        if not isLoopback(host):
            raise ValueError(
                f"IMAP server {description!r}: plain IMAP is only allowed to this machine; "
                "use tls:HOST:993, or tcp:HOST:143 without --imap-allow-plaintext for STARTTLS"
            )
        return tcp, None
    return tcp, options


@attrs.define
class _FolderEntry:
    folder: Folder
    raw: bytes


@attrs.define
class _Cache:
    uidValidity: int
    highestModSeq: Optional[int]
    entries: Dict[int, Tuple[FrozenSet[Flag], float, int]]


_LOST = (netError.ConnectionLost, netError.ConnectionDone, netError.ConnectionAborted)


def _unwrap(protocol: Any) -> IMAPClient:
    """
    The IMAPClient inside ClientService's proxy: attributes set on the
    proxy (callbacks, selection) would never reach the protocol.
    """
    return getattr(protocol, "_protocol", protocol)  # type: ignore[no-any-return]


def _prepareOrClose(proxy: Any, prepare: Callable[[IMAPClient], Awaitable[None]], clock: IReactorTime) -> "Deferred[None]":
    """
    Run C{prepare} on a new connection; if it fails, or takes longer than
    L{PREPARE_TIMEOUT}, close the connection without telling
    ClientService, which then tries again.

    The timeout: a server on its way down (or overloaded) can take the
    connection and never greet, and ClientService waits for the
    preparation as long as it takes, so a Dovecot restart could leave
    the IDLE connection never reconnected.

    ClientService (Twisted 26.10) leaves a connection whose preparation
    failed open, and when it closes later its state machine, already
    waiting to retry, raises C{NoTransition} and stops reconnecting for
    good. Detaching the proxy's loss notification first avoids that.
    """

    def failed(f: Any) -> Any:
        if hasattr(proxy, "_lostNotification"):
            proxy._lostNotification = lambda *args: None
        transport = getattr(proxy, "transport", None)
        if transport is not None:
            transport.abortConnection()
        return f

    d = Deferred.fromCoroutine(prepare(_unwrap(proxy)))
    d.addTimeout(PREPARE_TIMEOUT, clock)
    return d.addErrback(failed)


class _Session:
    """
    One user's connections, folder map and caches.
    """

    def __init__(self, backend: "IMAPBackend", user: str, password: str) -> None:
        self.backend = backend
        self.user = user
        self.password = password
        self.clock = backend.clock
        self.lastActive = self.clock.seconds()
        self.lock = DeferredLock()
        self.delimiter = "/"
        self.folders: Dict[str, _FolderEntry] = {}
        self.byName: Dict[bytes, str] = {}
        self.caches: Dict[str, _Cache] = {}
        self.aliases: Dict[str, Tuple[int, Dict[int, int]]] = {}
        #: the command connection, once logged in, until lost
        self.client: Optional[IMAPClient] = None
        self.service = self._service(self._prepareCommands)
        self.watcher: Optional[_Watcher] = None
        self.closed = False

    def _service(self, prepare: Callable[[IMAPClient], Awaitable[None]]) -> ClientService:
        backend = self.backend
        service = ClientService(
            backend.endpoint,
            Factory.forProtocol(lambda: IMAPClient()),
            retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=30.0),
            clock=self.clock,
            prepareConnection=lambda proxy: _prepareOrClose(proxy, prepare, self.clock),
        )
        service.startService()
        return service

    async def login(self, client: IMAPClient) -> None:
        await client.greeting
        if self.backend.startTLS is not None:
            await client.startTLSNow(self.backend.startTLS)
        await client.loginAs(self.user, self.password)
        enabled = await client.enable(b"QRESYNC")
        if b"QRESYNC" not in enabled:
            await client.enable(b"CONDSTORE")

    async def _prepare(self, client: IMAPClient) -> None:
        try:
            await self.login(client)
        except CommandFailed:
            log.warn("IMAP login failed for {user}", user=self.user)
            raise

    async def _prepareCommands(self, client: IMAPClient) -> None:
        await self._prepare(client)
        self.client = client

        def lost(reason: Any) -> None:
            if self.client is client:
                self.client = None

        client.onLost = lost

    async def connected(self) -> IMAPClient:
        """
        The logged-in command connection; fails if the server cannot be
        reached or refuses the login.
        """
        # Kept apart from whenConnected: ClientService refuses to be asked
        # again from inside its own callbacks, which is where waiting
        # commands resume.
        client = self.client
        if client is not None and not client.lost:
            return client
        return _unwrap(await self.service.whenConnected(failAfterFailures=1))

    def touch(self) -> None:
        self.lastActive = self.clock.seconds()

    async def run(self, op: Callable[[IMAPClient], Awaitable[T]]) -> T:
        """
        Run C{op} with the command connection, alone; once more on a new
        connection if the old one was lost (a server restart).
        """
        if self.closed:
            raise NoSuchFolder("the session is closed")
        self.touch()
        await self.lock.acquire()
        try:
            for attempt in (1, 2):
                client = await self.connected()
                timer = self.clock.callLater(COMMAND_TIMEOUT, client.transport.abortConnection)
                try:
                    return await op(client)
                except _LOST:
                    if attempt == 2:
                        raise
                    log.info("IMAP connection of {user} lost; retrying on a new one", user=self.user)
                    client.selected = None
                finally:
                    if timer.active():
                        timer.cancel()
            raise AssertionError("not reached")
        finally:
            self.lock.release()

    async def close(self) -> None:
        self.closed = True
        self.password = ""
        if self.watcher is not None:
            await self.watcher.stop()
            self.watcher = None
        await self.service.stopService()

    # folders

    async def refreshFolders(self, client: IMAPClient) -> Dict[str, _FolderEntry]:
        listing = await client.listMailboxes()
        delimiters = [d for _, d, _ in listing if d]
        if delimiters:
            self.delimiter = delimiters[0]
        delim = self.delimiter.encode()
        mailboxes: Dict[bytes, FrozenSet[bytes]] = {}
        for attributes, _, raw in listing:
            if b"\\NONEXISTENT" in attributes:
                continue
            if raw.upper() == b"INBOX":
                raw = b"INBOX"
            mailboxes[raw] = attributes
        if b"INBOX" not in mailboxes:
            mailboxes[b"INBOX"] = frozenset()
        roles: Dict[bytes, FolderType] = {b"INBOX": FolderType.INBOX}
        created = False
        for role in _ROLES:
            found = None
            if role.specialUse is not None:
                found = next(
                    (raw for raw, attrs_ in sorted(mailboxes.items()) if role.specialUse in attrs_ and raw not in roles),
                    None,
                )
            if found is None:
                topLevel = {decodeName(raw).lower(): raw for raw in sorted(mailboxes) if delim not in raw}
                for name in role.names:
                    raw = topLevel.get(name.lower())
                    if raw is not None and raw not in roles:
                        found = raw
                        break
            if found is None:
                found = encodeName(role.default)
                try:
                    await client.execute(b"CREATE", _quote(found))
                except CommandFailed as e:
                    if e.code != b"ALREADYEXISTS":
                        raise
                mailboxes[found] = frozenset()
                created = True
            roles[found] = role.type
        if created:
            log.info("created the missing special folders of {user}", user=self.user)
        ids = await self._loadIds()
        changed = False
        for raw in list(ids["names"]):
            if raw.encode() not in mailboxes:
                del ids["names"][raw]
                changed = True
        for raw in sorted(mailboxes, key=lambda r: (r.count(delim), r)):
            if raw.decode() not in ids["names"]:
                ids["names"][raw.decode()] = str(ids["next"])
                ids["next"] += 1
                changed = True
        if changed:
            await self._saveIds(ids)
        byName = {raw.encode(): fid for raw, fid in ids["names"].items()}
        folders: Dict[str, _FolderEntry] = {}
        for raw in sorted(mailboxes, key=lambda r: (r.count(delim), r)):
            parentRaw, _, last = raw.rpartition(delim)
            parentId = byName.get(parentRaw) if parentRaw else None
            kind = roles.get(raw, FolderType.MAIL)
            name = "Inbox" if raw == b"INBOX" else decodeName(last if parentId is not None else raw)
            folders[byName[raw]] = _FolderEntry(Folder(byName[raw], parentId, name, kind), raw)
        self.folders = folders
        self.byName = byName
        return folders

    async def _loadIds(self) -> Dict[str, Any]:
        value = await self.backend.store.load(self.user, "", FOLDERS_KEY)
        if value is None:
            return {"next": 1, "names": {}}
        return json.loads(value)

    async def _saveIds(self, ids: Dict[str, Any]) -> None:
        await self.backend.store.save(self.user, "", {FOLDERS_KEY: json.dumps(ids, sort_keys=True).encode()})

    async def entry(self, client: IMAPClient, folderId: str) -> _FolderEntry:
        if folderId not in self.folders:
            await self.refreshFolders(client)
        try:
            return self.folders[folderId]
        except KeyError:
            raise NoSuchFolder(folderId) from None

    async def select(self, client: IMAPClient, folderId: str, fresh: bool = False) -> Tuple[_FolderEntry, Any]:
        entry = await self.entry(client, folderId)
        if fresh or client.selected != entry.raw.decode() or getattr(client, "selectedInfo", None) is None:
            try:
                info = await client.select(entry.raw)
            except CommandFailed as e:
                if e.code == b"NONEXISTENT" or b"doesn't exist" in e.line:
                    self.folders.pop(folderId, None)
                    raise NoSuchFolder(folderId) from None
                raise
            client.selected = entry.raw.decode()
            client.selectedInfo = info  # type: ignore[attr-defined]
        return entry, client.selectedInfo  # type: ignore[attr-defined]

    # messages

    async def sync(self, client: IMAPClient, folderId: str) -> _Cache:
        """
        Bring the folder's cache up to date, fetching only what changed.
        """
        entry, sel = await self.select(client, folderId, fresh=True)
        cache = self.caches.get(folderId)
        if cache is None or cache.uidValidity != sel.uidValidity:
            entries: Dict[int, Tuple[FrozenSet[Flag], float, int]] = {}
            if sel.exists:
                fetched, _ = await client.uidFetch(b"1:*", _FETCH_ITEMS)
                for item in fetched:
                    self._merge(entries, item)
            cache = _Cache(sel.uidValidity, sel.highestModSeq, entries)
        elif sel.highestModSeq is not None and cache.highestModSeq is not None:
            if sel.highestModSeq != cache.highestModSeq or sel.exists != len(cache.entries):
                qresync = b"QRESYNC" in client.enabled
                fetched, vanished = await client.uidFetch(
                    b"1:*", _FETCH_ITEMS, changedSince=cache.highestModSeq, vanished=qresync
                )
                for item in fetched:
                    self._merge(cache.entries, item)
                for uid in vanished:
                    cache.entries.pop(uid, None)
                if len(cache.entries) != sel.exists:
                    present = set(await client.uidSearchAll()) if sel.exists else set()
                    for uid in list(cache.entries):
                        if uid not in present:
                            del cache.entries[uid]
            cache.highestModSeq = sel.highestModSeq
        else:
            # no CONDSTORE: the compact UID+flags state, dates and sizes
            # only for new messages
            fetched, _ = await client.uidFetch(b"1:*", b"(UID FLAGS)") if sel.exists else ([], [])
            present = set()
            new = []
            for item in fetched:
                uid = int(item[b"UID"])
                present.add(uid)
                if uid in cache.entries:
                    _, received, size = cache.entries[uid]
                    cache.entries[uid] = (_flagsOf(item.get(b"FLAGS")), received, size)
                else:
                    new.append(uid)
            for uid in list(cache.entries):
                if uid not in present:
                    del cache.entries[uid]
            if new:
                more, _ = await client.uidFetch(formatSet(new), _FETCH_ITEMS)
                for item in more:
                    self._merge(cache.entries, item)
        self.caches[folderId] = cache
        return cache

    @staticmethod
    def _merge(entries: Dict[int, Tuple[FrozenSet[Flag], float, int]], item: Dict[bytes, Any]) -> None:
        uid = int(item[b"UID"])
        old = entries.get(uid)
        flags = _flagsOf(item.get(b"FLAGS")) if b"FLAGS" in item else (old[0] if old else frozenset())
        received = parseDate(text(item[b"INTERNALDATE"])) if b"INTERNALDATE" in item else (old[1] if old else 0.0)
        size = int(item[b"RFC822.SIZE"]) if b"RFC822.SIZE" in item else (old[2] if old else 0)
        entries[uid] = (flags, received, size)

    async def aliasesOf(self, folderId: str, uidValidity: int) -> Dict[int, int]:
        """
        The folder's real uid -> the uid devices know, for edited drafts.
        """
        cached = self.aliases.get(folderId)
        if cached is None:
            value = await self.backend.store.load(self.user, "", ALIAS_PREFIX + folderId)
            data = json.loads(value) if value else {"v": uidValidity, "a": {}}
            cached = (int(data["v"]), {int(k): int(v) for k, v in data["a"].items()})
            self.aliases[folderId] = cached
        if cached[0] != uidValidity:
            cached = (uidValidity, {})
            self.aliases[folderId] = cached
        return cached[1]

    async def saveAliases(self, folderId: str) -> None:
        v, aliases = self.aliases[folderId]
        value = json.dumps({"v": v, "a": {str(k): n for k, n in aliases.items()}}).encode() if aliases else None
        await self.backend.store.save(self.user, "", {ALIAS_PREFIX + folderId: value})

    async def resolve(self, client: IMAPClient, folderId: str, uid: str) -> Tuple[_FolderEntry, Any, int]:
        """
        The folder, its selection and the real IMAP uid of C{uid}, checked
        to exist.
        """
        entry, sel = await self.select(client, folderId)
        validity, dash, number = uid.partition("-")
        if not dash or not validity.isdigit() or not number.isdigit() or int(validity) != sel.uidValidity:
            raise NoSuchMessage(f"{folderId}:{uid}")
        wanted = int(number)
        aliases = await self.aliasesOf(folderId, sel.uidValidity)
        real = next((r for r, presented in aliases.items() if presented == wanted), wanted)
        if real <= 0:
            raise NoSuchMessage(f"{folderId}:{uid}")
        fetched, _ = await client.uidFetch(b"%d" % real, b"(UID)")
        if not any(int(item[b"UID"]) == real for item in fetched):
            raise NoSuchMessage(f"{folderId}:{uid}")
        return entry, sel, real


class _Watcher:
    """
    The user's IDLE connection, shared by every waiting device.
    """

    def __init__(self, session: _Session) -> None:
        self.session = session
        self.watched: Dict[object, FrozenSet[str]] = {}
        self.client: Optional[IMAPClient] = None
        self.renewal: Optional[IDelayedCall] = None
        self.linger: Optional[IDelayedCall] = None
        self.connections = 0
        self.notify = False
        self.status: Dict[bytes, Tuple[int, ...]] = {}
        self.service = session._service(self._prepare)

    def folderIds(self) -> FrozenSet[str]:
        return frozenset().union(*self.watched.values()) if self.watched else frozenset()

    async def _prepare(self, client: IMAPClient) -> None:
        await self.session._prepare(client)
        if self.renewal is not None and self.renewal.active():
            self.renewal.cancel()
        self.client = client
        client.onUntagged = self._untagged
        client.onLost = lambda reason: self._lost(client)
        # The Inbox selected: Dovecot watches a selected mailbox most
        # closely, and most pushes are for the Inbox. NOTIFY then covers
        # the other folders on the same connection.
        await client.select(b"INBOX", readOnly=True)
        events = b"(MessageNew MessageExpunge FlagChange)"
        self.notify = await client.notify(b"(selected " + events + b") (personal " + events + b")")
        if not self.notify:
            await self._statusCheck(client, announce=False)
        await client.idle()
        self.connections += 1
        self.renewal = self.session.clock.callLater(IDLE_RENEW, self._renew)
        if self.connections > 1:
            # Reconnected: whatever changed meanwhile went unseen.
            log.info("IMAP IDLE of {user} reconnected", user=self.session.user)
            self._announce(self.folderIds())

    def _lost(self, client: IMAPClient) -> None:
        if self.client is client:
            self.client = None
        if self.renewal is not None and self.renewal.active():
            self.renewal.cancel()

    def _renew(self) -> None:
        client = self.client
        if client is None:
            return

        async def renew() -> None:
            await client.done()
            if not self.notify:
                await self._statusCheck(client, announce=True)
            await client.idle()
            self.renewal = self.session.clock.callLater(IDLE_RENEW, self._renew)

        def failed(f: Any) -> None:
            log.failure("renewing IDLE failed for {user}", f, user=self.session.user)
            if client.transport is not None:
                client.transport.loseConnection()

        Deferred.fromCoroutine(renew()).addErrback(failed)

    async def _statusCheck(self, client: IMAPClient, announce: bool) -> None:
        """
        Without NOTIFY: compare the other watched folders' STATUS with the
        last seen.
        """
        for folderId in sorted(self.folderIds()):
            entry = self.session.folders.get(folderId)
            if entry is None or entry.raw == b"INBOX":
                continue
            items = b"(MESSAGES UIDNEXT UIDVALIDITY" + (b" HIGHESTMODSEQ)" if b"CONDSTORE" in client.capabilities else b")")
            result = await client.execute(b"STATUS", _quote(entry.raw), items)
            for r in result.untagged:
                if r and r[0] == b"STATUS" and len(r) >= 3:
                    values = tuple(int(v) for v in r[2][1::2])
                    old = self.status.get(entry.raw)
                    self.status[entry.raw] = values
                    if announce and old is not None and old != values:
                        self._announce(frozenset({folderId}))

    def _untagged(self, response: Response) -> None:
        if not response:
            return
        if response[0] == b"STATUS" and len(response) >= 2:
            raw = text(response[1])
            if raw.upper() == b"INBOX":
                raw = b"INBOX"
            folderId = self.session.byName.get(raw)
            if folderId is not None:
                self._announce(frozenset({folderId}))
            else:
                # a folder this session has not listed yet: tell every
                # watcher rather than lose the change
                self._announce(self.folderIds())
        elif len(response) >= 2 and response[1] in (b"EXISTS", b"EXPUNGE", b"FETCH") or response[0] == b"VANISHED":
            inbox = self.session.byName.get(b"INBOX")
            if inbox is not None:
                self._announce(frozenset({inbox}))
        elif response[0] == b"BYE":
            log.info("IMAP server ended the IDLE of {user}", user=self.session.user)

    def _announce(self, folderIds: FrozenSet[str]) -> None:
        watched = folderIds & self.folderIds()
        if watched:
            self.session.backend.notifier.announce(FolderChange(self.session.user, watched))

    def add(self, token: object, folderIds: FrozenSet[str]) -> None:
        if self.linger is not None and self.linger.active():
            self.linger.cancel()
        self.linger = None
        self.watched[token] = folderIds

    def remove(self, token: object) -> None:
        self.watched.pop(token, None)
        if not self.watched and self.linger is None:
            self.linger = self.session.clock.callLater(WATCH_LINGER, self._lingered)

    def _lingered(self) -> None:
        self.linger = None
        if not self.watched and self.session.watcher is self:
            self.session.watcher = None
            Deferred.fromCoroutine(self.stop())

    async def stop(self) -> None:
        for call in (self.renewal, self.linger):
            if call is not None and call.active():
                call.cancel()
        await self.service.stopService()


@implementer(IMailbox)
class IMAPMailbox:
    """
    One user's mailbox on the IMAP server.
    """

    def __init__(self, session: _Session) -> None:
        self.user = session.user
        self._session = session

    def _run(self, op: Callable[[IMAPClient], Awaitable[T]]) -> "Deferred[T]":
        return Deferred.fromCoroutine(self._session.run(op))

    def _changed(self, *folderIds: str) -> None:
        self._session.backend.notifier.announce(FolderChange(self.user, frozenset(folderIds)))

    def folders(self) -> "Deferred[List[Folder]]":
        async def folders(client: IMAPClient) -> List[Folder]:
            return [e.folder for e in (await self._session.refreshFolders(client)).values()]

        return self._run(folders)

    def _siblings(self, parentId: Optional[str], name: str, exclude: Optional[str] = None) -> None:
        for entry in self._session.folders.values():
            f = entry.folder
            if f.parentId == parentId and f.name.lower() == name.lower() and f.id != exclude:
                raise FolderExists(name)

    def _path(self, parentId: Optional[str], name: str) -> bytes:
        if parentId is None:
            return encodeName(name)
        return self._session.folders[parentId].raw + self._session.delimiter.encode() + encodeName(name)

    def createFolder(self, parentId: Optional[str], name: str) -> "Deferred[Folder]":
        async def create(client: IMAPClient) -> Folder:
            _checkName(name)
            await self._session.refreshFolders(client)
            if parentId is not None and parentId not in self._session.folders:
                raise NoSuchFolder(parentId)
            self._siblings(parentId, name)
            raw = self._path(parentId, name)
            try:
                await client.execute(b"CREATE", _quote(raw))
            except CommandFailed as e:
                if e.code == b"ALREADYEXISTS":
                    raise FolderExists(name) from None
                raise InvalidFolderName(f"{name}: {e}") from None
            await client.execute(b"SUBSCRIBE", _quote(raw))
            folders = await self._session.refreshFolders(client)
            return folders[self._session.byName[raw]].folder

        return self._run(create)

    def updateFolder(self, folderId: str, parentId: Optional[str], name: str) -> "Deferred[Folder]":
        async def update(client: IMAPClient) -> Folder:
            entry = await self._session.entry(client, folderId)
            if entry.folder.type != FolderType.MAIL:
                raise SpecialFolder(entry.folder.name)
            _checkName(name)
            folders = self._session.folders
            if parentId is not None and parentId not in folders:
                raise NoSuchFolder(parentId)
            ancestor = parentId
            while ancestor is not None:
                if ancestor == folderId:
                    raise InvalidFolderName("a folder cannot move into itself")
                ancestor = folders[ancestor].folder.parentId
            self._siblings(parentId, name, exclude=folderId)
            old, new = entry.raw, self._path(parentId, name)
            if new != old:
                try:
                    await client.execute(b"RENAME", _quote(old), _quote(new))
                except CommandFailed as e:
                    if e.code == b"ALREADYEXISTS":
                        raise FolderExists(name) from None
                    raise
                client.selected = None
                ids = await self._session._loadIds()
                delim = self._session.delimiter
                renamed = {}
                for raw, fid in ids["names"].items():
                    if raw == old.decode():
                        renamed[new.decode()] = fid
                    elif raw.startswith(old.decode() + delim):
                        renamed[new.decode() + raw[len(old.decode()) :]] = fid
                    else:
                        renamed[raw] = fid
                ids["names"] = renamed
                await self._session._saveIds(ids)
            folders = await self._session.refreshFolders(client)
            return folders[folderId].folder

        return self._run(update)

    def deleteFolder(self, folderId: str) -> "Deferred[None]":
        async def delete(client: IMAPClient) -> None:
            entry = await self._session.entry(client, folderId)
            if entry.folder.type != FolderType.MAIL:
                raise SpecialFolder(entry.folder.name)
            prefix = entry.raw + self._session.delimiter.encode()
            doomed = [e.raw for e in self._session.folders.values() if e.raw == entry.raw or e.raw.startswith(prefix)]
            if client.selected is not None:
                await client.execute(b"UNSELECT" if b"UNSELECT" in client.capabilities else b"CLOSE")
                client.selected = None
            for raw in sorted(doomed, key=lambda r: -r.count(self._session.delimiter.encode())):
                try:
                    await client.execute(b"DELETE", _quote(raw))
                except CommandFailed as e:
                    if e.code != b"NONEXISTENT":
                        raise
                await client.execute(b"UNSUBSCRIBE", _quote(raw))
            for raw in doomed:
                fid = self._session.byName.get(raw)
                if fid is not None:
                    self._session.caches.pop(fid, None)
            await self._session.refreshFolders(client)

        return self._run(delete)

    def messages(self, folderId: str) -> "Deferred[List[MessageInfo]]":
        async def listing(client: IMAPClient) -> List[MessageInfo]:
            cache = await self._session.sync(client, folderId)
            aliases = await self._session.aliasesOf(folderId, cache.uidValidity)
            if any(real not in cache.entries for real in aliases):
                for real in [r for r in aliases if r not in cache.entries]:
                    del aliases[real]
                await self._session.saveAliases(folderId)
            v = cache.uidValidity
            shown = sorted((aliases.get(uid, uid), info) for uid, info in cache.entries.items())
            return [MessageInfo(f"{v}-{n}", flags, received, size) for n, (flags, received, size) in shown]

        return self._run(listing)

    def message(self, folderId: str, uid: str) -> "Deferred[bytes]":
        async def read(client: IMAPClient) -> bytes:
            _, _, real = await self._session.resolve(client, folderId, uid)
            item = b"BINARY.PEEK[]" if b"BINARY" in client.capabilities else b"BODY.PEEK[]"
            fetched, _ = await client.uidFetch(b"%d" % real, b"(UID " + item + b")")
            for got in fetched:
                if int(got[b"UID"]) == real:
                    body = got.get(b"BINARY[]", got.get(b"BODY[]"))
                    if body is not None:
                        return text(body) if not isinstance(body, bytes) else body
            raise NoSuchMessage(f"{folderId}:{uid}")

        return self._run(read)

    def messagesData(self, folderId: str, uids: Sequence[str]) -> "Deferred[Dict[str, bytes]]":
        async def read(client: IMAPClient) -> Dict[str, bytes]:
            _, sel = await self._session.select(client, folderId)
            aliases = await self._session.aliasesOf(folderId, sel.uidValidity)
            presentedToReal = {presented: real for real, presented in aliases.items()}
            wanted: Dict[int, str] = {}
            for uid in uids:
                validity, dash, number = uid.partition("-")
                if dash and validity.isdigit() and number.isdigit() and int(validity) == sel.uidValidity:
                    real = presentedToReal.get(int(number), int(number))
                    if real > 0:
                        wanted[real] = uid
            if not wanted:
                return {}
            item = b"BINARY.PEEK[]" if b"BINARY" in client.capabilities else b"BODY.PEEK[]"
            # One UID FETCH for the batch: a Sync window costs one round trip.
            fetched, _ = await client.uidFetch(b",".join(b"%d" % r for r in sorted(wanted)), b"(UID " + item + b")")
            found: Dict[str, bytes] = {}
            for got in fetched:
                uid = wanted.get(int(got[b"UID"]))
                body = got.get(b"BINARY[]", got.get(b"BODY[]"))
                if uid is not None and body is not None:
                    found[uid] = body if isinstance(body, bytes) else text(body)
            return found

        return self._run(read)

    def append(
        self, folderId: str, raw: bytes, flags: Sequence[Flag] = (), received: Optional[float] = None
    ) -> "Deferred[str]":
        async def append(client: IMAPClient) -> str:
            entry = await self._session.entry(client, folderId)
            when = self._session.clock.seconds() if received is None else received
            validity, uid = await self._append(client, entry.raw, raw, _imapFlags(flags), when)
            self._changed(folderId)
            return f"{validity}-{uid}"

        return self._run(append)

    async def _append(self, client: IMAPClient, name: bytes, raw: bytes, flags: List[bytes], when: float) -> Tuple[int, int]:
        try:
            validity, uid = await client.append(name, raw or b"\r\n", flags, when)
        except CommandFailed as e:
            if e.code in (b"TRYCREATE", b"NONEXISTENT"):
                raise NoSuchFolder(name.decode()) from None
            raise
        if validity is None or uid is None:
            raise CommandFailed(b"NO", b"the server did not say the new message's uid (UIDPLUS needed)")
        return validity, uid

    def setFlags(self, folderId: str, uid: str, flags: Sequence[Flag]) -> "Deferred[None]":
        async def store(client: IMAPClient) -> None:
            _, _, real = await self._session.resolve(client, folderId, uid)
            await client.execute(b"UID STORE", b"%d" % real, b"FLAGS.SILENT", b"(" + b" ".join(_imapFlags(flags)) + b")")
            self._changed(folderId)

        return self._run(store)

    def replace(self, folderId: str, uid: str, raw: bytes) -> "Deferred[None]":
        async def replace(client: IMAPClient) -> None:
            entry, sel, real = await self._session.resolve(client, folderId, uid)
            fetched, _ = await client.uidFetch(b"%d" % real, b"(UID FLAGS INTERNALDATE)")
            [item] = [i for i in fetched if int(i[b"UID"]) == real]
            flags = [_IMAP_FLAGS[f] for f in sorted(_flagsOf(item.get(b"FLAGS")))]
            when = parseDate(text(item[b"INTERNALDATE"]))
            validity, newUid = await self._append(client, entry.raw, raw, flags, when)
            await client.execute(b"UID STORE", b"%d" % real, b"+FLAGS.SILENT", b"(\\Deleted)")
            await client.uidExpunge(b"%d" % real)
            aliases = await self._session.aliasesOf(folderId, validity)
            presented = aliases.pop(real, real)
            aliases[newUid] = presented
            await self._session.saveAliases(folderId)
            self._changed(folderId)

        return self._run(replace)

    def move(self, folderId: str, uid: str, toFolderId: str) -> "Deferred[str]":
        async def move(client: IMAPClient) -> str:
            target = await self._session.entry(client, toFolderId)
            _, sel, real = await self._session.resolve(client, folderId, uid)
            if target.raw == client.selected:
                # a move within one folder changes nothing
                return uid
            moved = await client.uidMove(b"%d" % real, target.raw)
            if not moved or real not in moved:
                raise NoSuchMessage(f"{folderId}:{uid}")
            aliases = await self._session.aliasesOf(folderId, sel.uidValidity)
            if aliases.pop(real, None) is not None:
                await self._session.saveAliases(folderId)
            status = await client.execute(b"STATUS", _quote(target.raw), b"(UIDVALIDITY)")
            validity = next(int(r[2][1]) for r in status.untagged if r and r[0] == b"STATUS")
            self._changed(folderId, toFolderId)
            return f"{validity}-{moved[real]}"

        return self._run(move)

    def delete(self, folderId: str, uid: str) -> "Deferred[None]":
        async def delete(client: IMAPClient) -> None:
            _, _, real = await self._session.resolve(client, folderId, uid)
            await client.execute(b"UID STORE", b"%d" % real, b"+FLAGS.SILENT", b"(\\Deleted)")
            await client.uidExpunge(b"%d" % real)
            self._changed(folderId)

        return self._run(delete)

    def empty(self, folderId: str) -> "Deferred[None]":
        async def empty(client: IMAPClient) -> None:
            _, sel = await self._session.select(client, folderId, fresh=True)
            if sel.exists:
                await client.execute(b"STORE", b"1:*", b"+FLAGS.SILENT", b"(\\Deleted)")
                await client.execute(b"EXPUNGE")
                self._changed(folderId)

        return self._run(empty)


def _quote(raw: bytes) -> bytes:
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


@implementer(IMailboxBackend)
class IMAPBackend:
    """
    Mailboxes on one IMAP server.

    @ivar endpoint: where the server is.
    @ivar startTLS: the TLS options to upgrade plain connections with
        (STARTTLS), or L{None} (implicit TLS, or plain to loopback).
    @ivar sessionIdle: seconds without activity after which a user's
        connections close and the password is forgotten.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        store: IStateStore,
        clock: IReactorTime,
        startTLS: Any = None,
        notifier: Optional[IChangeNotifier] = None,
        sessionIdle: float = SESSION_IDLE,
    ) -> None:
        self.endpoint = endpoint
        self.sessionIdle = sessionIdle
        self.store = store
        self.clock = clock
        self.startTLS = startTLS
        self.notifier = notifier if notifier is not None else LocalNotifier()
        self._sessions: Dict[str, _Session] = {}
        self._digests: Dict[str, bytes] = {}
        self._key = secrets.token_bytes(32)
        self._reaper: Optional[IDelayedCall] = None

    def _digest(self, password: str) -> bytes:
        return hmac.new(self._key, password.encode("utf-8"), hashlib.sha256).digest()

    async def login(self, user: str, password: str) -> bool:
        """
        Is C{password} right for C{user}? Proven by logging in to IMAP once
        per session; later calls compare with the session's password.
        """
        session = self._sessions.get(user)
        digest = self._digest(password)
        if session is not None and not session.closed and hmac.compare_digest(self._digests[user], digest):
            session.touch()
            return True
        candidate = _Session(self, user, password)
        try:
            await candidate.connected()
        except Exception as e:
            # ClientService reports the failure before it schedules its
            # retry: stop it on the next turn, or the retry survives.
            self.clock.callLater(0, lambda: Deferred.fromCoroutine(candidate.close()))
            if isinstance(e, CommandFailed):
                return False
            log.warn("cannot reach the IMAP server for {user}: {error}", user=user, error=str(e))
            raise
        old = self._sessions.get(user)
        self._sessions[user] = candidate
        self._digests[user] = digest
        if old is not None:
            candidate.watcher = old.watcher
            if candidate.watcher is not None:
                candidate.watcher.session = candidate
            old.watcher = None
            Deferred.fromCoroutine(old.close())
        self._scheduleReaper()
        return True

    def _scheduleReaper(self) -> None:
        if self._reaper is None or not self._reaper.active():
            self._reaper = self.clock.callLater(60, self._reap)

    def _reap(self) -> None:
        now = self.clock.seconds()
        for user, session in list(self._sessions.items()):
            watching = session.watcher is not None and session.watcher.watched
            if not watching and now - session.lastActive > self.sessionIdle:
                log.info("closing the idle IMAP session of {user}", user=user)
                del self._sessions[user]
                self._digests.pop(user, None)
                Deferred.fromCoroutine(session.close())
        self._reaper = None
        if self._sessions:
            self._scheduleReaper()

    def credentials(self, user: str) -> Optional[Tuple[str, str]]:
        """
        The user's own login, while the session lasts (for SMTP AUTH).
        """
        session = self._sessions.get(user)
        if session is None or session.closed:
            return None
        return user, session.password

    def mailbox(self, user: str) -> "Deferred[IMailbox]":
        session = self._sessions.get(user)
        if session is None:
            return Deferred.fromCoroutine(self._noSession(user))
        session.touch()
        return succeed(IMAPMailbox(session))

    async def _noSession(self, user: str) -> IMailbox:
        raise UnauthorizedLogin(f"no verified credentials for {user} in this process")

    def watch(self, user: str, folderIds: FrozenSet[str]) -> Callable[[], None]:
        session = self._sessions.get(user)
        if session is None:
            return lambda: None
        if session.watcher is None:
            session.watcher = _Watcher(session)
        watcher = session.watcher
        token = object()
        watcher.add(token, frozenset(folderIds))
        session.touch()

        def unwatch() -> None:
            watcher.remove(token)
            session.touch()

        return unwatch

    def connectionCount(self) -> int:
        """
        The IMAP connections open now (commands and IDLE), for operators
        and the benchmark.
        """
        count = 0
        for session in self._sessions.values():
            for service in [session.service] + ([session.watcher.service] if session.watcher else []):
                if _connected(service):
                    count += 1
        return count

    async def close(self) -> None:
        """
        Close every session (stop the service).
        """
        if self._reaper is not None and self._reaper.active():
            self._reaper.cancel()
        sessions, self._sessions = list(self._sessions.values()), {}
        self._digests.clear()
        for session in sessions:
            await session.close()


def _connected(service: ClientService) -> bool:
    d = service.whenConnected()
    connected = d.called
    if not connected:
        d.cancel()
    else:
        d.addErrback(lambda f: None)
    return connected


@implementer(ICredentialsChecker)
class IMAPChecker:
    """
    Checks HTTP Basic credentials by logging in to the IMAP server (once
    per session: see L{IMAPBackend.login}).
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, backend: IMAPBackend) -> None:
        self._backend = backend

    async def _check(self, credentials: IUsernamePassword) -> bytes:
        name, password = plainCredentials(credentials)
        if not password:
            log.warn("authentication failed: empty password for {user}", user=name)
            raise UnauthorizedLogin()
        try:
            ok = await self._backend.login(name, password)
        except Exception:
            # The server could not be reached (logged by login()): the
            # password may well be right, so not 401, which would make
            # phones ask their users for it.
            raise CannotCheck()
        if not ok:
            log.warn("authentication failed: IMAP refused {user}", user=name)
            raise UnauthorizedLogin()
        return name.encode("utf-8")

    def requestAvatarId(self, credentials: IUsernamePassword) -> "Deferred[bytes]":
        return Deferred.fromCoroutine(self._check(credentials))
