# -*- test-case-name: tests.test_backend_maildir -*-
"""
Mailboxes in Maildir++ directories, the layout Dovecot and Courier use.

One user's maildir is a directory whose own C{cur/ new/ tmp/} hold the
Inbox; every other folder is a sibling directory named after its path,
components joined and prefixed by C{.} (C{.Sent}, C{.Archive.2024};
children of the Inbox live under C{.INBOX.}). Names are stored in
modified UTF-7 (RFC 3501 5.1.3), as Dovecot stores them, so that an
existing Dovecot maildir is served as it is and Dovecot serves ours.

Two small files of our own keep ids stable; Dovecot's files
(C{dovecot-uidlist}, C{dovecot.index*}, C{subscriptions}, ...) are never
written:

  - C{directpush-folders} in the maildir root, JSON::

      {"version": 1, "next": 8,
       "folders": {".Drafts": "2", ".Sent": "3", ...},
       "roles": {"DRAFTS": "2", "SENT": "3", "DELETED": "4", "OUTBOX": "5"}}

    maps each folder directory to its id (the Inbox is always C{"1"}),
    and records which folders play the special roles. It is rewritten
    atomically (temporary file, fsync, rename) on every change.

  - C{directpush-uidlist} in each folder directory, text, like Dovecot's
    own list::

      directpush-uidlist 1 V1700000000 N43
      41 1700000000.M1P2.host
      42 1700000123.M20Q3R9f2c4a1b.host,S=2201

    a header with the uid validity and the next uid, then one C{uid
    basename} line per message, where the basename is the maildir file
    name before C{:}. New messages are appended (fsynced); lines of
    messages that went away are dropped by an atomic rewrite once there
    are enough of them. A later line for the same basename wins. Uids
    are never reused: the next uid is above every uid the file ever
    held.

A message's uid belongs to its basename, so flag changes (which rename
the file to another C{:2,} suffix, here or in any other maildir reader)
keep it. Listings scan C{cur/} and C{new/} with L{os.scandir}, never
reading messages; they are cached per folder and only redone when a
directory's modification time changed (or is too recent to be trusted).

All file system work runs through the injected C{runBlocking}, under a
per-mailbox lock, so the reactor thread never blocks and concurrent
requests for one mailbox never interleave their writes.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import secrets
import shutil
import socket
import stat
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorFDSet, IReactorTime
from twisted.logger import Logger
from twisted.python.filepath import FilePath
from zope.interface import implementer

from ..interfaces import IChangeNotifier, IMailbox, IMailboxBackend, IMessagePages
from ..model import (
    Flag,
    Folder,
    FolderChange,
    FolderExists,
    FolderType,
    InvalidFolderName,
    Listing,
    NoSuchFolder,
    NoSuchMessage,
    SpecialFolder,
)
from ..notify import LocalNotifier
from ._diskindex import SEE_BATCH, SPILL_ROWS, DiskIndex, DiskTable
from ._messagetable import INSERT_LIMIT, MAX_UID, NEW, MessageTable
from ._messagetable import flagsOf as _flagsOf

if TYPE_CHECKING:
    from .maildirwatch import MaildirWatcher

__all__ = [
    "MaildirBackend",
    "MaildirMailbox",
    "UnsafeUserName",
    "decodeMailboxName",
    "encodeMailboxName",
]

log = Logger()

T = TypeVar("T")
RunBlocking = Callable[[Callable[[], T]], "Deferred[T]"]

#: Our files; any other file in a maildir is left alone.
FOLDERS_FILE = "directpush-folders"
UIDLIST_FILE = "directpush-uidlist"
_UIDLIST_MAGIC = "directpush-uidlist"

#: The Inbox is the maildir root; its id never changes.
INBOX_ID = "1"

#: Longest folder name accepted, in characters (as the memory backend).
MAX_NAME = 200
#: Longest directory name most file systems take, in bytes.
_NAME_MAX = 255

#: A directory modified less than this long before a scan may change
#: again within the same timestamp tick, so its mtime cannot prove that
#: nothing changed since (Dovecot reasons the same way).
SETTLE_SECONDS = 2.0

#: Rewrite a uid list when it holds this many lines of vanished messages
#: (or more than half as many as live ones, whichever is larger).
_STALE_LINES = 64

#: Indirection so tests can count directory scans.
_scandir = os.scandir

_LETTERS = {flag.value: flag for flag in Flag}


class UnsafeUserName(ValueError):
    """
    The user name cannot be turned into a maildir path safely.
    """


# Modified UTF-7 (RFC 3501 section 5.1.3)


def encodeMailboxName(name: str) -> str:
    """
    C{name} in modified UTF-7: printable ASCII stays (C{&} becomes
    C{&-}), every other run becomes C{&<base64 of UTF-16BE, "," for
    "/">-}.
    """
    out: List[str] = []
    pending: List[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            encoded = base64.b64encode(data).rstrip(b"=").replace(b"/", b",")
            out.append("&" + encoded.decode("ascii") + "-")
            del pending[:]

    for c in name:
        if " " <= c <= "~":
            flush()
            out.append("&-" if c == "&" else c)
        else:
            pending.append(c)
    flush()
    return "".join(out)


def decodeMailboxName(encoded: str) -> str:
    """
    The name modified UTF-7 C{encoded} stands for.

    @raise ValueError: if C{encoded} is not modified UTF-7.
    """
    out: List[str] = []
    i = 0
    while i < len(encoded):
        c = encoded[i]
        if c != "&":
            if not " " <= c <= "~":
                raise ValueError(f"not modified UTF-7: {encoded!r}")
            out.append(c)
            i += 1
            continue
        end = encoded.find("-", i + 1)
        if end < 0:
            raise ValueError(f"unterminated modified UTF-7: {encoded!r}")
        chunk = encoded[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            data = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
            if len(data) % 2:
                raise ValueError(f"odd UTF-16 length in {encoded!r}")
            # strict: a lone surrogate raises UnicodeDecodeError, a ValueError
            out.append(data.decode("utf-16-be"))
        i = end + 1
    return "".join(out)


# Small file helpers (all blocking; call inside runBlocking)


def _writeAll(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsyncDirectory(path: str) -> None:
    """
    Make a rename or creation in C{path} durable.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _writeAtomically(path: str, data: Union[bytes, Iterable[bytes]], tmpDir: str) -> None:
    """
    Replace C{path} with C{data} (bytes, or chunks of them): readers see
    the old file or the new one, never a part. C{tmpDir} is on the same
    file system (a maildir's C{tmp/}, whose stale files maildir readers
    clean up).
    """
    tmp = os.path.join(tmpDir, f"{os.path.basename(path)}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            for chunk in [data] if isinstance(data, bytes) else data:
                _writeAll(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsyncDirectory(os.path.dirname(path))


def _makeMaildir(path: str, subfolder: bool) -> None:
    """
    Create the maildir C{path} (and its cur/new/tmp) where missing.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    for sub in ("cur", "new", "tmp"):
        try:
            os.mkdir(os.path.join(path, sub), 0o700)
        except FileExistsError:
            pass
    if subfolder:
        # Maildir++: tells delivery agents this is a folder, not a root.
        marker = os.path.join(path, "maildirfolder")
        if not os.path.exists(marker):
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT, 0o600))


def _messageNames(path: str) -> Iterator[Tuple[str, str]]:
    """
    The message files in the maildir subdirectory C{path}: (file name,
    basename) for each, skipping dot files and names a uid list line
    could not hold.
    """
    with _scandir(path) as it:
        for dirEntry in it:
            name = dirEntry.name
            if name.startswith(".") or "\n" in name:
                continue
            basename = name.split(":", 1)[0]
            if basename:
                yield name, basename


def _uidLines(entries: Iterable[Tuple[int, str]]) -> Iterator[Tuple[int, bytes]]:
    """
    Uid list lines for (uid, basename) pairs, a slice at a time as (how
    many, bytes): a big folder's list is never held whole, nor as a
    string for each line.
    """
    pairs = iter(entries)
    while True:
        part = [f"{uid} {basename}\n" for uid, basename in itertools.islice(pairs, 1024)]
        if not part:
            return
        yield len(part), "".join(part).encode("utf-8", "surrogateescape")


def _repairMaildir(path: str) -> None:
    """
    Give an existing maildir C{path} whichever of cur/new/tmp it lacks: a
    crash between creating a folder and its subdirectories leaves it so,
    and every write goes through tmp/. A missing C{path} stays missing (a
    folder another client deleted is not brought back).
    """
    for sub in ("cur", "new", "tmp"):
        try:
            os.mkdir(os.path.join(path, sub), 0o700)
        except (FileExistsError, FileNotFoundError):
            pass


def _withFlags(basename: str, oldFilename: Optional[str], flags: Iterable[Flag]) -> str:
    """
    The C{cur/} file name for C{basename} with C{flags}, keeping letters
    we do not model (Dovecot keywords a-z, P for passed).
    """
    kept = ""
    if oldFilename is not None:
        _, _, info = oldFilename.partition(":")
        if info.startswith("2,"):
            kept = "".join(c for c in info[2:] if c not in _LETTERS)
    letters = sorted(set(kept) | {flag.value for flag in flags})
    return basename + ":2," + "".join(letters)


def _toNanoseconds(seconds: float) -> int:
    # Split first: a float product near 1.7e18 is only good to 256 ns.
    whole = int(seconds // 1)
    return whole * 1_000_000_000 + round((seconds - whole) * 1e9)


def _toSeconds(nanoseconds: int) -> float:
    whole, fraction = divmod(nanoseconds, 1_000_000_000)
    return whole + fraction / 1e9


def _hostname() -> str:
    # maildir(5): escape "/" and ":" in the host part; "," separates
    # Dovecot's S=/W= fields, so escape it too.
    host = socket.gethostname() or "localhost"
    return host.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")


# Mailbox internals


@attrs.define
class _FolderState:
    """
    What we know of one folder's messages: the uid list, and the files as
    of the last scan.

    @ivar table: the message files, in uid order: a L{MessageTable}, or
        for a big folder a L{DiskTable}.
    @ivar fileLines: uid lines in the uid list file (live and stale).
    @ivar mtimes: C{cur/} and C{new/} mtimes (ns) at the last scan.
    @ivar settled: whether those mtimes were old enough, when scanned, to
        prove nothing changed while they stay the same.
    @ivar hasNew: whether some message may still be in C{new/}.
    """

    dirname: str
    uidValidity: int = 0
    nextUid: int = 1
    table: Union[MessageTable, DiskTable] = attrs.Factory(MessageTable)
    fileLines: int = 0
    fileExists: bool = False
    mtimes: Optional[Tuple[int, int]] = None
    settled: bool = False
    hasNew: bool = False


@attrs.frozen
class _Role:
    key: str
    type: FolderType
    default: str
    names: Tuple[str, ...]


#: The folders a mailbox gets when missing, and the names by which
#: existing ones are recognised (case-insensitively, first match wins).
_ROLES = (
    _Role("DRAFTS", FolderType.DRAFTS, "Drafts", ("Drafts",)),
    _Role("SENT", FolderType.SENT, "Sent", ("Sent", "Sent Items", "Sent Messages")),
    _Role("DELETED", FolderType.DELETED, "Trash", ("Trash", "Deleted Items", "Deleted Messages")),
    _Role("OUTBOX", FolderType.OUTBOX, "Outbox", ("Outbox",)),
)
#: Junk has no EAS type: a plain mail folder, created with a new mailbox
#: only (a user who deletes it does not get it back).
_JUNK = _Role("JUNK", FolderType.MAIL, "Junk", ("Junk", "Spam", "Junk E-mail"))


def _parseDirname(dirname: str) -> Optional[Tuple[Optional[str], str]]:
    """
    The parent directory name (C{""} for the Inbox, L{None} for top
    level) and the on-disk last component of folder directory
    C{dirname}, or L{None} if C{dirname} is not a folder.
    """
    if not dirname.startswith(".") or len(dirname) < 2:
        return None
    components = dirname[1:].split(".")
    if any(not c for c in components):
        return None
    if components[0].upper() == "INBOX":
        if len(components) == 1:
            # Only the namespace of the Inbox's children, not a folder.
            return None
        parent: Optional[str] = "" if len(components) == 2 else dirname.rsplit(".", 1)[0]
    else:
        parent = None if len(components) == 1 else dirname.rsplit(".", 1)[0]
    return parent, components[-1]


def _displayName(component: str) -> str:
    try:
        return decodeMailboxName(component)
    except ValueError:
        # Dovecot configured for raw UTF-8 names, or a stray directory:
        # show it as it is rather than hide it.
        return component


def _childDirname(parentDirname: Optional[str], name: str) -> str:
    encoded = encodeMailboxName(name)
    if parentDirname is None:
        return "." + encoded
    if parentDirname == "":
        return ".INBOX." + encoded
    return parentDirname + "." + encoded


def _checkName(name: str) -> None:
    if (
        not name
        or len(name) > MAX_NAME
        or name.strip() != name
        or any(c in "/." or c < " " or c == "\x7f" for c in name)
    ):
        raise InvalidFolderName(name)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidFolderName(name) from None


@implementer(IMailbox, IMessagePages)
class MaildirMailbox:
    """
    One user's Maildir++ tree.

    Every C{_do*} method blocks and must run through C{runBlocking} with
    C{_lock} held; public methods arrange that and announce changes from
    the reactor thread.
    """

    def __init__(self, user: str, path: str, backend: "MaildirBackend") -> None:
        self.user = user
        self._path = path
        self._backend = backend
        self._lock = threading.Lock()
        self._opened = False
        # folder directory name ("" for the Inbox) <-> id
        self._ids: Dict[str, str] = {}
        self._dirs: Dict[str, str] = {}
        self._roles: Dict[str, str] = {}
        self._nextId = 2
        self._states: Dict[str, _FolderState] = {}
        # the big folders' tables (made when the first one spills)
        self._index: Optional[DiskIndex] = None

    # plumbing

    def _run(self, f: Callable[[], T]) -> "Deferred[T]":
        def locked() -> T:
            with self._lock:
                try:
                    self._doOpen()
                    return f()
                finally:
                    if self._index is not None:
                        self._index.commit()

        return self._backend._runBlocking(locked)

    def _announce(self, folderIds: Iterable[str]) -> None:
        ids = frozenset(folderIds)
        if ids:
            self._backend.notifier.announce(FolderChange(self.user, ids))

    def _dirPath(self, dirname: str) -> str:
        return os.path.join(self._path, dirname) if dirname else self._path

    # folder map

    def _doOpen(self) -> None:
        if self._opened:
            return
        fresh = not os.path.exists(os.path.join(self._path, FOLDERS_FILE))
        _makeMaildir(self._path, subfolder=False)
        renamed = self._loadFolderMap()
        if not self._doRefreshFolders(createJunk=fresh) and renamed:
            self._saveFolderMap()
        self._opened = True
        if fresh:
            log.info("maildir for {user} ready at {path}", user=self.user, path=self._path)

    def _loadFolderMap(self) -> bool:
        """
        Read the folder map; return whether it recorded renames (which it
        then no longer needs to).
        """
        self._ids = {"": INBOX_ID}
        try:
            with open(os.path.join(self._path, FOLDERS_FILE), "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            return False
        except ValueError:
            # Ids are lost, messages are not: carry on with new ids.
            log.error("unreadable {file} in {path}; folder ids restart", file=FOLDERS_FILE, path=self._path)
            return False
        folders = data.get("folders", {})
        for dirname, folderId in folders.items():
            if dirname and isinstance(folderId, str) and folderId != INBOX_ID:
                self._ids[dirname] = folderId
        self._roles = {k: v for k, v in data.get("roles", {}).items() if isinstance(v, str)}
        renaming = data.get("renaming")
        if not isinstance(renaming, list):
            renaming = []
        for pair in renaming:
            # A rename cut short by a crash: the id goes with the directory.
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(d, str) and d for d in pair)):
                continue
            source, target = pair
            if _parseDirname(target) is None or source not in self._ids or target in self._ids:
                continue
            if self._isDir(target) and not self._isDir(source):
                self._ids[target] = self._ids.pop(source)
        numeric = [int(i) for i in self._ids.values() if i.isdigit()]
        self._nextId = max([int(data.get("next", 2)), 2] + [n + 1 for n in numeric])
        self._dirs = {v: k for k, v in self._ids.items()}
        return bool(renaming)

    def _saveFolderMap(self, renaming: Sequence[Tuple[str, str]] = ()) -> None:
        """
        Write the folder map.

        @param renaming: (source, target) directory renames about to be
            made: recorded so that a crash between them and the next save
            leaves each folder its id under whichever name its directory
            has (see L{_loadFolderMap}).
        """
        data: Dict[str, Any] = {
            "version": 1,
            "next": self._nextId,
            "folders": {d: i for d, i in sorted(self._ids.items()) if d},
            "roles": dict(sorted(self._roles.items())),
        }
        if renaming:
            data["renaming"] = [list(pair) for pair in renaming]
        _writeAtomically(
            os.path.join(self._path, FOLDERS_FILE),
            json.dumps(data, indent=1).encode("utf-8") + b"\n",
            os.path.join(self._path, "tmp"),
        )

    def _isDir(self, dirname: str) -> bool:
        return os.path.isdir(self._dirPath(dirname))

    def _newId(self) -> str:
        folderId = str(self._nextId)
        self._nextId += 1
        return folderId

    def _scanFolderDirs(self) -> List[str]:
        found = []
        with _scandir(self._path) as it:
            for entry in it:
                if entry.name.startswith(".") and entry.is_dir() and _parseDirname(entry.name) is not None:
                    found.append(entry.name)
        return found

    def _createDir(self, dirname: str) -> None:
        _makeMaildir(self._dirPath(dirname), subfolder=True)

    def _doRefreshFolders(self, createJunk: bool = False) -> bool:
        """
        Reconcile the id map with the directories on disk, and make sure
        every special folder exists. Return whether the map changed.
        """
        dirnames = set(self._scanFolderDirs())
        # A Dovecot ".A.B" without ".A": give the child a real parent.
        for dirname in sorted(dirnames):
            parsed = _parseDirname(dirname)
            while parsed is not None and parsed[0] and parsed[0] not in dirnames:
                log.info("creating missing parent folder {dirname} in {path}", dirname=parsed[0], path=self._path)
                self._createDir(parsed[0])
                dirnames.add(parsed[0])
                parsed = _parseDirname(parsed[0])
        changed = False
        for dirname in list(self._ids):
            if dirname and dirname not in dirnames:
                folderId = self._ids.pop(dirname)
                self._dropState(folderId)
                changed = True
        # parents first, so ids grow down the tree
        for dirname in sorted(dirnames, key=lambda d: (d.count("."), d)):
            if dirname not in self._ids:
                self._ids[dirname] = self._newId()
                changed = True
        self._dirs = {v: k for k, v in self._ids.items()}

        topLevel = {d: _displayName(d[1:]).lower() for d in self._ids if d and "." not in d[1:]}
        taken = set()
        for role in _ROLES + ((_JUNK,) if createJunk else ()):
            current = self._roles.get(role.key)
            if current is not None and self._dirs.get(current) in topLevel:
                taken.add(current)
                continue
            found = None
            for wanted in role.names:
                for dirname, lowered in sorted(topLevel.items()):
                    if lowered == wanted.lower() and self._ids[dirname] not in taken:
                        found = self._ids[dirname]
                        break
                if found is not None:
                    break
            if found is None:
                dirname = _childDirname(None, role.default)
                self._createDir(dirname)
                found = self._ids[dirname] = self._newId()
                self._dirs[found] = dirname
                topLevel[dirname] = role.default.lower()
            if role is not _JUNK:
                self._roles[role.key] = found
            taken.add(found)
            changed = True
        if changed or not os.path.exists(os.path.join(self._path, FOLDERS_FILE)):
            self._saveFolderMap()
        return changed

    def _typeOf(self, folderId: str) -> FolderType:
        if folderId == INBOX_ID:
            return FolderType.INBOX
        for role in _ROLES:
            if self._roles.get(role.key) == folderId:
                return role.type
        return FolderType.MAIL

    def _folder(self, folderId: str) -> Folder:
        dirname = self._dirname(folderId)
        if dirname == "":
            return Folder(INBOX_ID, None, "Inbox", FolderType.INBOX)
        parsed = _parseDirname(dirname)
        assert parsed is not None
        parentDir, component = parsed
        parentId = None if parentDir is None else self._ids[parentDir]
        return Folder(folderId, parentId, _displayName(component), self._typeOf(folderId))

    def _dirname(self, folderId: str) -> str:
        """
        The directory of C{folderId}, looking at the disk again if it is
        not known (another process may have created it).
        """
        dirname = self._dirs.get(folderId)
        if dirname is None:
            self._doRefreshFolders()
            dirname = self._dirs.get(folderId)
            if dirname is None:
                raise NoSuchFolder(folderId)
        return dirname

    def _allFolders(self) -> List[Folder]:
        order = sorted(self._ids, key=lambda d: (d.count(".") - d.upper().startswith(".INBOX."), d.lower()))
        return [self._folder(self._ids[d]) for d in order]

    def _checkSiblings(self, parentId: Optional[str], name: str, exclude: Optional[str] = None) -> None:
        lowered = name.lower()
        for folder in self._allFolders():
            if folder.parentId == parentId and folder.name.lower() == lowered and folder.id != exclude:
                raise FolderExists(name)

    def _checkDirname(self, dirname: str) -> None:
        if len(os.fsencode(dirname)) > _NAME_MAX:
            raise InvalidFolderName(dirname)

    def _doCreateFolder(self, parentId: Optional[str], name: str) -> Folder:
        _checkName(name)
        self._doRefreshFolders()
        parentDir = None if parentId is None else self._dirname(parentId)
        self._checkSiblings(parentId, name)
        dirname = _childDirname(parentDir, name)
        self._checkDirname(dirname)
        try:
            os.mkdir(self._dirPath(dirname), 0o700)
        except FileExistsError:
            raise FolderExists(name) from None
        self._createDir(dirname)
        folderId = self._ids[dirname] = self._newId()
        self._dirs[folderId] = dirname
        self._saveFolderMap()
        return self._folder(folderId)

    def _isSpecial(self, folderId: str) -> bool:
        return self._typeOf(folderId) != FolderType.MAIL

    def _doUpdateFolder(self, folderId: str, parentId: Optional[str], name: str) -> Folder:
        self._doRefreshFolders()
        oldDir = self._dirname(folderId)
        if self._isSpecial(folderId):
            raise SpecialFolder(self._folder(folderId).name)
        _checkName(name)
        parentDir = None if parentId is None else self._dirname(parentId)
        ancestor = parentId
        while ancestor is not None:
            if ancestor == folderId:
                raise InvalidFolderName("a folder cannot move into itself")
            ancestor = self._folder(ancestor).parentId
        self._checkSiblings(parentId, name, exclude=folderId)
        newDir = _childDirname(parentDir, name)
        if newDir == oldDir:
            return self._folder(folderId)
        subtree = sorted(d for d in self._ids if d == oldDir or d.startswith(oldDir + "."))
        renames = [(d, newDir + d[len(oldDir) :]) for d in subtree]
        for _, target in renames:
            self._checkDirname(target)
            if os.path.lexists(self._dirPath(target)) and not (
                # a change of case on a case-insensitive file system
                target.lower() == oldDir.lower()
                and os.path.samefile(self._dirPath(target), self._dirPath(oldDir))
            ):
                raise FolderExists(name)
        # The map learns of the renames before the directories move.
        self._saveFolderMap(renaming=renames)
        done: List[Tuple[str, str]] = []
        try:
            for source, target in renames:
                os.rename(self._dirPath(source), self._dirPath(target))
                done.append((source, target))
        except OSError:
            # Put back what moved, so the tree stays whole.
            for source, target in reversed(done):
                os.rename(self._dirPath(target), self._dirPath(source))
            self._saveFolderMap()
            raise
        for source, target in renames:
            movedId = self._ids.pop(source)
            self._ids[target] = movedId
            state = self._states.get(movedId)
            if state is not None:
                state.dirname = target
        self._dirs = {v: k for k, v in self._ids.items()}
        _fsyncDirectory(self._path)
        self._saveFolderMap()
        return self._folder(folderId)

    def _doDeleteFolder(self, folderId: str) -> None:
        self._doRefreshFolders()
        dirname = self._dirname(folderId)
        if self._isSpecial(folderId):
            raise SpecialFolder(self._folder(folderId).name)
        subtree = sorted(d for d in self._ids if d == dirname or d.startswith(dirname + "."))
        trash = os.path.join(self._path, "tmp")
        for d in subtree:
            # Out of sight at once (one rename), then removed at leisure;
            # a crash leaves it in tmp/, which maildir readers clean.
            doomed = os.path.join(trash, f"directpush-deleted.{secrets.token_hex(8)}")
            os.rename(self._dirPath(d), doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            removed = self._ids.pop(d)
            self._dropState(removed)
        self._dirs = {v: k for k, v in self._ids.items()}
        self._saveFolderMap()

    # messages: uid lists and scans

    def _state(self, folderId: str, fresh: bool = False, claimNew: bool = False) -> _FolderState:
        """
        The folder's state, read and scanned on first use.

        @param fresh: scan again if the directories changed since the last
            scan (listings want this; operations on a known uid do not,
            and rescan only when the file is not where it was).
        @param claimNew: move messages found in C{new/} to C{cur/}: a
            listing shows them to a reader, so they are no longer new.
        """
        dirname = self._dirname(folderId)
        state = self._states.get(folderId)
        if state is None:
            _repairMaildir(self._dirPath(dirname))
            state = _FolderState(dirname)
            self._readUidList(state)
            self._states[folderId] = state
            self._scan(state, force=True, claimNew=claimNew)
        elif fresh:
            self._scan(state, claimNew=claimNew)
        return state

    def _dropState(self, folderId: str) -> None:
        state = self._states.pop(folderId, None)
        if state is not None and isinstance(state.table, DiskTable):
            state.table.clear()

    def _spill(self, state: _FolderState) -> None:
        """
        Move a folder's table to disk once it has more rows (and files
        a scan found) than are worth keeping in memory.
        """
        table = state.table
        if isinstance(table, MessageTable) and len(table) + table.stashCount() > self._backend._spillRows:
            if self._index is None:
                self._index = DiskIndex()
            state.table = DiskTable.spill(self._index, table)

    def _uidListPath(self, state: _FolderState) -> str:
        return os.path.join(self._dirPath(state.dirname), UIDLIST_FILE)

    def _readUidList(self, state: _FolderState) -> None:
        """
        Read the uid list into the folder's table, as rows whose files the
        first scan is still to look at. Read a line at a time: a big
        folder's list is never held whole.
        """
        highest = 0
        lines = 0
        try:
            f = open(self._uidListPath(state), "rb")
        except FileNotFoundError:
            pass
        else:
            with f:
                state.fileExists = True
                for number, raw in enumerate(f):
                    line = raw.decode("utf-8", "surrogateescape").rstrip("\n")
                    if number == 0 and line.startswith(_UIDLIST_MAGIC):
                        for field in line.split()[2:]:
                            if field[:1] == "V" and field[1:].isdigit():
                                state.uidValidity = int(field[1:])
                            elif field[:1] == "N" and field[1:].isdigit():
                                highest = max(highest, int(field[1:]) - 1)
                        continue
                    uid, _, basename = line.partition(" ")
                    if not uid.isdigit() or not 0 < int(uid) <= MAX_UID or not basename or len(basename) > _NAME_MAX:
                        # e.g. a line cut short by a crash while appending
                        continue
                    lines += 1
                    highest = max(highest, int(uid))
                    if lines > self._backend._spillRows:
                        self._spill(state)
                    table = state.table
                    try:
                        table.add(int(uid), basename, "cur", "", 0.0, 0, indexed=False, unstated=True)
                    except ValueError:
                        index = table.indexOf(int(uid))
                        if index < 0:
                            raise
                        # A draft replaced under the same uid: the later
                        # name is the message's (and the earlier one, if
                        # a crash left its file, gets a uid of its own).
                        table.rename(index, basename)
            table = state.table
            table.reindex()
            # A later line for the same basename wins.
            table.remove(table.duplicates())
        state.fileLines = lines
        state.nextUid = highest + 1
        if not state.uidValidity:
            state.uidValidity = max(1, int(self._backend._clock.seconds()))

    def _writeUidList(self, state: _FolderState) -> None:
        header = f"{_UIDLIST_MAGIC} 1 V{state.uidValidity} N{state.nextUid}\n".encode()

        def chunks() -> Iterator[bytes]:
            yield header
            for _, data in _uidLines(state.table.items()):
                yield data

        folderPath = self._dirPath(state.dirname)
        _writeAtomically(self._uidListPath(state), chunks(), os.path.join(folderPath, "tmp"))
        state.fileLines = len(state.table)
        state.fileExists = True

    def _appendUidList(self, state: _FolderState, added: Iterable[Tuple[int, str]]) -> None:
        if not state.fileExists:
            self._writeUidList(state)
            return
        count = 0
        fd = None
        try:
            for lines, data in _uidLines(added):
                if fd is None:
                    fd = os.open(self._uidListPath(state), os.O_WRONLY | os.O_APPEND)
                _writeAll(fd, data)
                count += lines
            if fd is not None:
                os.fsync(fd)
        finally:
            if fd is not None:
                os.close(fd)
        state.fileLines += count

    def _forget(self, state: _FolderState, indexes: Iterable[int]) -> None:
        """
        Drop the rows of vanished messages; rewrite the uid list once it
        holds enough dead lines.
        """
        state.table.remove(indexes)
        self._compact(state)

    def _compact(self, state: _FolderState) -> None:
        stale = state.fileLines - len(state.table)
        if stale > max(_STALE_LINES, len(state.table) // 2):
            self._writeUidList(state)

    def _scan(self, state: _FolderState, force: bool = False, claimNew: bool = False) -> None:
        folderPath = self._dirPath(state.dirname)
        curPath = os.path.join(folderPath, "cur")
        newPath = os.path.join(folderPath, "new")
        try:
            mtimes = (os.stat(curPath).st_mtime_ns, os.stat(newPath).st_mtime_ns)
        except FileNotFoundError:
            # The folder went away under us (another client deleted it).
            self._doRefreshFolders()
            raise NoSuchFolder(state.dirname) from None
        if not force and state.settled and mtimes == state.mtimes and not (claimNew and state.hasNew):
            return
        # Record before reading: a change during the scan changes the mtime.
        state.mtimes = mtimes
        state.settled = max(mtimes) < (self._backend._clock.seconds() - SETTLE_SECONDS) * 1e9

        # The scan marks the rows whose files it sees, and what it did not
        # mark is gone: it holds nothing for the files the table knows.
        # Files it does not know are stashed in the table by basename and
        # get uids at the end, in basename order: names start with the
        # delivery time, so uid order follows it. A folder that turns out
        # big moves to disk on the way (see _spill).
        state.table.unmarkAll()
        tails: Dict[str, str] = {}
        stashed = 0

        def seen(batch: List[Tuple[str, str, str]]) -> None:
            """
            Look up each (sub, basename, name) of C{batch}: mark the rows
            seen, stash the unknown, stat the files only the uid list
            knew so far.
            """
            nonlocal stashed
            table = state.table
            entries: List[Tuple[str, str, str]] = []
            for sub, basename, name in batch:
                tail = name[len(basename) :]
                entries.append((basename, sub, tails.setdefault(tail, tail)))
            # (Two names for one basename in cur/: the last one wins.)
            found = table.seeMany(entries)
            stated = []
            for (sub, _, name), (basename, _, tail), (index, unstated) in zip(batch, entries, found):
                if index < 0:
                    table.stash(basename, sub, tail)
                    stashed += 1
                elif unstated:
                    # Known from the uid list only: the first scan reads its file.
                    try:
                        st = os.stat(os.path.join(folderPath, sub, name))
                    except FileNotFoundError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        stated.append((index, sub, tail, _toSeconds(st.st_mtime_ns), st.st_size))
            table.stated(stated)
            self._spill(state)

        batch: List[Tuple[str, str, str]] = []
        for name, basename in _messageNames(curPath):
            batch.append(("cur", basename, name))
            if len(batch) == SEE_BATCH:
                seen(batch)
                batch = []
        seen(batch)
        for name, basename in _messageNames(newPath):
            table = state.table
            if table.stashed(basename, "cur"):
                continue  # cur/ wins: a message caught mid-move
            index = table.find(basename)
            if index >= 0 and table.marked(index):
                continue  # the same: seen in cur/ by this scan
            sub = "new"
            if claimNew:
                # As Dovecot does: seen by a reader, the message is no longer new.
                target = name if ":" in name else name + ":2,"
                try:
                    os.rename(os.path.join(newPath, name), os.path.join(curPath, target))
                except FileNotFoundError:
                    continue
                except OSError:
                    log.failure("cannot move {name} to cur/ in {path}", name=name, path=folderPath)
                else:
                    sub, name = "cur", target
            seen([(sub, basename, name)])
        self._spill(state)
        table = state.table
        vanished = table.unmarked()
        if vanished:
            self._forget(state, vanished)

        first = state.nextUid
        for basename, sub, tail in table.unstash():
            try:
                st = os.stat(os.path.join(folderPath, sub, basename + tail))
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            table.add(state.nextUid, basename, sub, tail, _toSeconds(st.st_mtime_ns), st.st_size, indexed=stashed <= INSERT_LIMIT)
            state.nextUid += 1
        if stashed > INSERT_LIMIT:
            table.reindex()
        state.hasNew = table.hasNew()
        if not state.fileExists:
            self._writeUidList(state)
        else:
            # New rows have the highest uids.
            self._appendUidList(state, table.itemsFrom(first))
            # e.g. the first scan after many messages went while we were down
            self._compact(state)

    def _entry(self, state: _FolderState, uid: str) -> int:
        """
        The row of C{uid} in the folder's table.
        """
        if not uid.isdigit() or len(uid) > 20:
            raise NoSuchMessage(uid)
        index = state.table.indexOf(int(uid))
        if index < 0:
            raise NoSuchMessage(uid)
        return index

    def _withFile(self, folderId: str, uid: str, action: Callable[[_FolderState, int, str], T]) -> T:
        """
        Run C{action(state, index, path)} on the message's file, C{index}
        being its row in C{state.table}. An unknown uid gets one look at
        changed directories; a file that is not where it was (another
        reader changed its flags) one full rescan.
        """
        if not uid.isdigit() or len(uid) > 20:
            raise NoSuchMessage(uid)
        state = self._state(folderId)
        for attempt in (1, 2):
            try:
                index = self._entry(state, uid)
                table = state.table
                path = os.path.join(self._dirPath(state.dirname), table.sub(index), table.filename(index))
                return action(state, index, path)
            except NoSuchMessage:
                if attempt == 2:
                    raise
                self._scan(state)
            except FileNotFoundError:
                if attempt == 2:
                    raise NoSuchMessage(uid) from None
                self._scan(state, force=True)
        raise AssertionError("unreachable")

    # blocking operations

    def _doMessages(self, folderId: str) -> Listing:
        state = self._state(folderId, fresh=True, claimNew=True)
        return state.table.listing()

    def _doMessagesAfter(self, folderId: str, afterUid: int, limit: int) -> Listing:
        fresh = afterUid <= 0
        state = self._state(folderId, fresh=fresh, claimNew=fresh)
        return state.table.page(max(0, afterUid), max(0, limit))

    def _doMessage(self, folderId: str, uid: str) -> bytes:
        def read(state: _FolderState, index: int, path: str) -> bytes:
            with open(path, "rb") as f:
                return f.read()

        return self._withFile(folderId, uid, read)

    def _doMessagesData(self, folderId: str, uids: Sequence[str]) -> Dict[str, bytes]:
        self._state(folderId)
        found: Dict[str, bytes] = {}
        for uid in uids:
            try:
                found[uid] = self._doMessage(folderId, uid)
            except NoSuchMessage:
                pass
        return found

    def _uniqueName(self, size: int) -> str:
        now = self._backend._clock.seconds()
        seconds = int(now)
        micros = int((now - seconds) * 1_000_000)
        counter = next(self._backend._counter)
        return f"{seconds}.M{micros}Q{counter}R{secrets.token_hex(4)}.{self._backend._host},S={size}"

    def _doAppend(self, folderId: str, raw: bytes, flags: Sequence[Flag], received: float) -> str:
        state = self._state(folderId)
        folderPath = self._dirPath(state.dirname)
        basename = self._uniqueName(len(raw))
        tmp = os.path.join(folderPath, "tmp", basename)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:
            # The folder went away under us: the scan says so.
            self._scan(state, force=True)
            raise
        try:
            try:
                _writeAll(fd, raw)
                os.fsync(fd)
            finally:
                os.close(fd)
            mtime = _toNanoseconds(received)
            os.utime(tmp, ns=(mtime, mtime))
            # Flagged mail is filed (cur/); unflagged mail is delivered
            # (new/), so that other readers show it as recent.
            sub, filename = ("cur", _withFlags(basename, None, flags)) if flags else ("new", basename)
            os.rename(tmp, os.path.join(folderPath, sub, filename))
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _fsyncDirectory(os.path.join(folderPath, sub))
        state.hasNew = state.hasNew or sub == "new"
        uid = state.nextUid
        state.table.add(uid, basename, sub, filename[len(basename) :], _toSeconds(mtime), len(raw))
        state.nextUid += 1
        self._appendUidList(state, [(uid, basename)])
        self._spill(state)
        return str(uid)

    def _doSetFlags(self, folderId: str, uid: str, flags: Sequence[Flag]) -> bool:
        wanted = frozenset(flags)

        def rename(state: _FolderState, index: int, path: str) -> bool:
            table = state.table
            basename, current = table.basename(index), table.filename(index)
            if table.sub(index) == "cur" and _flagsOf(current) == wanted:
                return False
            changed = _flagsOf(current) != wanted
            target = _withFlags(basename, current, wanted)
            os.rename(path, os.path.join(self._dirPath(state.dirname), "cur", target))
            table.setFile(index, "cur", target[len(basename) :])
            return changed

        return self._withFile(folderId, uid, rename)

    def _doReplace(self, folderId: str, uid: str, raw: bytes) -> None:
        def replace(state: _FolderState, index: int, path: str) -> None:
            table = state.table
            uid, received, current = table.uid(index), table.received(index), table.filename(index)
            folderPath = self._dirPath(state.dirname)
            # A new name: the old one carries the old size (S=).
            newBasename = self._uniqueName(len(raw))
            tmp = os.path.join(folderPath, "tmp", newBasename)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                try:
                    _writeAll(fd, raw)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                mtime = _toNanoseconds(received)
                os.utime(tmp, ns=(mtime, mtime))
                filename = _withFlags(newBasename, current, _flagsOf(current))
                os.rename(tmp, os.path.join(folderPath, "cur", filename))
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            # The uid list learns the new name before the old file goes: a
            # crash in between leaves the draft twice, never lost.
            self._appendUidList(state, [(uid, newBasename)])
            os.unlink(path)
            _fsyncDirectory(os.path.join(folderPath, "cur"))
            # Same uid, so the same row.
            table.rename(index, newBasename)
            table.setFile(index, "cur", filename[len(newBasename) :])
            table.setStat(index, received, len(raw))

        self._withFile(folderId, uid, replace)

    def _doMove(self, folderId: str, uid: str, toFolderId: str) -> str:
        target = self._state(toFolderId)

        def move(state: _FolderState, index: int, path: str) -> str:
            table = state.table
            basename, filename, sub = table.basename(index), table.filename(index), table.sub(index)
            received, size = table.received(index), table.size(index)
            if state is target:
                # Nothing to move on disk; the message still gets a new uid.
                self._forget(state, [index])
                newBasename = basename
            else:
                # Keep the basename unless the target already has it
                # (a copy of the same file).
                newBasename = basename if target.table.find(basename) < 0 else self._uniqueName(size)
                sub = "cur"
                filename = _withFlags(newBasename, filename, _flagsOf(filename))
                targetCur = os.path.join(self._dirPath(target.dirname), "cur")
                os.rename(path, os.path.join(targetCur, filename))
                _fsyncDirectory(targetCur)
                self._forget(state, [index])
            uid = target.nextUid
            target.table.add(uid, newBasename, sub, filename[len(newBasename) :], received, size)
            target.nextUid += 1
            self._appendUidList(target, [(uid, newBasename)])
            self._spill(target)
            return str(uid)

        return self._withFile(folderId, uid, move)

    def _doDelete(self, folderId: str, uid: str) -> None:
        def unlink(state: _FolderState, index: int, path: str) -> None:
            os.unlink(path)
            self._forget(state, [index])

        self._withFile(folderId, uid, unlink)

    def _doEmpty(self, folderId: str) -> bool:
        state = self._state(folderId)
        self._scan(state, force=True)
        table = state.table
        if not len(table):
            return False
        folderPath = self._dirPath(state.dirname)
        for _, name, tail, bits, _, _ in table.dump():
            filename = (name + tail).decode("utf-8", "surrogateescape")
            try:
                os.unlink(os.path.join(folderPath, "new" if bits & NEW else "cur", filename))
            except FileNotFoundError:
                pass
        table.clear()
        if state.fileLines:
            self._writeUidList(state)
        return True

    # IMailbox

    def folders(self) -> "Deferred[List[Folder]]":
        def folders() -> List[Folder]:
            self._doRefreshFolders()
            return self._allFolders()

        return self._run(folders)

    def createFolder(self, parentId: Optional[str], name: str) -> "Deferred[Folder]":
        return self._run(lambda: self._doCreateFolder(parentId, name))

    def updateFolder(self, folderId: str, parentId: Optional[str], name: str) -> "Deferred[Folder]":
        return self._run(lambda: self._doUpdateFolder(folderId, parentId, name))

    def deleteFolder(self, folderId: str) -> "Deferred[None]":
        return self._run(lambda: self._doDeleteFolder(folderId))

    def messages(self, folderId: str) -> "Deferred[Listing]":
        return self._run(lambda: self._doMessages(folderId))

    def messagesAfter(self, folderId: str, afterUid: int, limit: int) -> "Deferred[Listing]":
        return self._run(lambda: self._doMessagesAfter(folderId, afterUid, limit))

    def message(self, folderId: str, uid: str) -> "Deferred[bytes]":
        return self._run(lambda: self._doMessage(folderId, uid))

    def messagesData(self, folderId: str, uids: Sequence[str]) -> "Deferred[Dict[str, bytes]]":
        # One thread hop and one lock for the lot: a Sync window read
        # message by message spends more on hops than on reading.
        uids = list(uids)
        return self._run(lambda: self._doMessagesData(folderId, uids))

    def append(
        self,
        folderId: str,
        raw: bytes,
        flags: Sequence[Flag] = (),
        received: Optional[float] = None,
    ) -> "Deferred[str]":
        # Read the clock here, on the reactor thread, when the call was made.
        when = self._backend._clock.seconds() if received is None else received
        raw = bytes(raw)
        flags = tuple(flags)
        d = self._run(lambda: self._doAppend(folderId, raw, flags, when))

        def announce(uid: str) -> str:
            self._announce([folderId])
            return uid

        return d.addCallback(announce)

    def setFlags(self, folderId: str, uid: str, flags: Sequence[Flag]) -> "Deferred[None]":
        flags = tuple(flags)
        d = self._run(lambda: self._doSetFlags(folderId, uid, flags))

        def announce(changed: bool) -> None:
            if changed:
                self._announce([folderId])

        return d.addCallback(announce)

    def replace(self, folderId: str, uid: str, raw: bytes) -> "Deferred[None]":
        raw = bytes(raw)
        d = self._run(lambda: self._doReplace(folderId, uid, raw))
        return d.addCallback(lambda _: self._announce([folderId]))

    def move(self, folderId: str, uid: str, toFolderId: str) -> "Deferred[str]":
        d = self._run(lambda: self._doMove(folderId, uid, toFolderId))

        def announce(newUid: str) -> str:
            self._announce([folderId, toFolderId])
            return newUid

        return d.addCallback(announce)

    def delete(self, folderId: str, uid: str) -> "Deferred[None]":
        d = self._run(lambda: self._doDelete(folderId, uid))
        return d.addCallback(lambda _: self._announce([folderId]))

    def empty(self, folderId: str) -> "Deferred[None]":
        d = self._run(lambda: self._doEmpty(folderId))

        def announce(changed: bool) -> None:
            if changed:
                self._announce([folderId])

        return d.addCallback(announce)


def _templateFields(template: str) -> List[str]:
    fields = []
    i = 0
    while i < len(template):
        if template[i] == "%":
            code = template[i + 1 : i + 2]
            if code not in ("u", "n", "d", "%"):
                raise ValueError(f"unknown %{code} in maildir root {template!r}; use %u, %n, %d or %%")
            fields.append(code)
            i += 2
        else:
            i += 1
    return fields


@implementer(IMailboxBackend)
class MaildirBackend:
    """
    Maildir++ mailboxes, one per user.

    @param root: a L{FilePath} under which each user's maildir is the
        directory named after the user (C{<DATA>/mail/<user>}), or an
        absolute path template as Dovecot's C{mail_location} takes it:
        C{%u} the user name, C{%n} its local part, C{%d} its domain,
        C{%%} a percent sign (C{/var/vmail/%d/%n/Maildir}).
    @param runBlocking: runs a blocking callable off the reactor thread
        (production: a thread pool), returning a L{Deferred} of its
        result.
    @param clock: the time for arrival stamps and scan decisions.
    @param notifier: announces changes; a L{LocalNotifier} by default.
    @param reactor: provides L{IReactorFDSet}, to watch folders with
        inotify for L{watch} (see L{directpush.backends.maildirwatch});
        L{None}: no watching, only changes made through this backend
        are announced.
    @param mailboxIdle: seconds an unused mailbox (its folder map and
        listings) stays cached: after between this and twice this, the
        backend lets go of it. L{None}: mailboxes stay for good.
        A mailbox in use (by a request, a rescan) is never dropped, and
        there is never more than one per user.
    @param spillRows: a folder of more messages than this keeps its
        index in a temporary file rather than in memory (see
        L{directpush.backends._diskindex}).
    """

    def __init__(
        self,
        root: Union["FilePath[str]", str],
        runBlocking: RunBlocking[object],
        clock: IReactorTime,
        notifier: Optional[IChangeNotifier] = None,
        reactor: Optional[IReactorFDSet] = None,
        mailboxIdle: Optional[float] = None,
        spillRows: int = SPILL_ROWS,
    ) -> None:
        if spillRows < 1:
            raise ValueError(f"spillRows must be at least 1, not {spillRows}")
        if isinstance(root, str) and "%" not in root:
            root = FilePath(root)
        if isinstance(root, str):
            self._fields = _templateFields(root)
            if not os.path.isabs(root):
                raise ValueError(f"maildir root {root!r} must be an absolute path")
            # The part no user name can influence: every maildir must be
            # below it.
            fixed = root.split("%", 1)[0] if "%" in root else root
            self._fixed = os.path.normpath(os.path.dirname(fixed) if "%" in root else fixed)
        self._root = root
        self._runBlocking: RunBlocking[object] = runBlocking
        self._clock = clock
        self.notifier: IChangeNotifier = notifier if notifier is not None else LocalNotifier()
        # Every mailbox anyone holds, by user: so that there is one per
        # user even after the cache below let go of it.
        self._mailboxes: "weakref.WeakValueDictionary[str, MaildirMailbox]" = weakref.WeakValueDictionary()
        # The cache: mailboxes used since the last sweep, and in the
        # period before. A mailbox costs a few kilobytes and a big folder
        # listing far more, and most users, once their device waits on a
        # Ping, do not need theirs for minutes.
        self._mailboxIdle = mailboxIdle
        self._recent: Dict[str, MaildirMailbox] = {}
        self._older: Dict[str, MaildirMailbox] = {}
        self._sweeper: Optional[IDelayedCall] = None
        self._counter = itertools.count(1)
        self._host = _hostname()
        self._reactor = reactor
        self._watcher: Optional["MaildirWatcher"] = None
        self._spillRows = spillRows

    def pathFor(self, user: str) -> str:
        """
        The maildir of C{user}.

        @raise UnsafeUserName: if C{user} could lead outside the root.
        """
        if (
            not user
            or user.startswith(".")
            or ".." in user
            or any(c in user for c in "/\\\x00")
            or user.count("@") > 1
        ):
            raise UnsafeUserName(user)
        if isinstance(self._root, FilePath):
            return self._root.child(user).path
        local, at, domain = user.partition("@")
        if "d" in self._fields and not domain:
            # "%d/%n" would put a plain "alice" beside the domains.
            raise UnsafeUserName(user)
        values = {"u": user, "n": local, "d": domain, "%": "%"}
        out: List[str] = []
        i = 0
        template = self._root
        while i < len(template):
            if template[i] == "%":
                out.append(values[template[i + 1]])
                i += 2
            else:
                out.append(template[i])
                i += 1
        path = os.path.normpath("".join(out))
        if not path.startswith(self._fixed.rstrip(os.sep) + os.sep):
            raise UnsafeUserName(user)
        return path

    def watch(self, user: str, folderIds: FrozenSet[str]) -> Callable[[], None]:
        """
        Announce changes others make to these folders (inotify, see
        L{directpush.backends.maildirwatch}); without a reactor, or where
        inotify is missing, nothing is watched.
        """
        if self._watcher is None:
            if self._reactor is None:
                return lambda: None
            try:
                from .maildirwatch import MaildirWatcher
            except ImportError:
                log.warn("no inotify here: only changes made through this server are pushed")
                self._reactor = None
                return lambda: None
            self._watcher = MaildirWatcher(self, self._reactor, self._clock)
        return self._watcher.watch(user, folderIds)

    def mailbox(self, user: str) -> "Deferred[IMailbox]":
        try:
            path = self.pathFor(user)
        except UnsafeUserName:
            log.warn("refusing unsafe user name {user!r}", user=user)
            return fail()
        box = self._mailboxes.get(user)
        if box is None:
            box = self._mailboxes[user] = MaildirMailbox(user, path, self)
        self._keep(user, box)
        if box._opened:
            # Set under the lock once the opening is done: no need to
            # take a thread (and two wake-ups) to find that out.
            return succeed(box)
        opened = box._run(lambda: None)
        return opened.addCallback(lambda _: box)

    def _keep(self, user: str, box: MaildirMailbox) -> None:
        self._recent[user] = box
        if self._mailboxIdle is not None and self._sweeper is None:
            self._sweeper = self._clock.callLater(self._mailboxIdle, self._sweep)

    def _sweep(self) -> None:
        """
        Let go of the mailboxes nobody used for a whole period; those in
        use stay reachable through L{_mailboxes}.
        """
        self._sweeper = None
        self._older, self._recent = self._recent, {}
        if self._older:
            self._sweeper = self._clock.callLater(self._mailboxIdle, self._sweep)  # type: ignore[arg-type]

    def stopCaching(self) -> None:
        """
        Let go of every cached mailbox and stop the sweeps (when the server
        stops).
        """
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._recent.clear()
        self._older.clear()

    @property
    def cachedMailboxes(self) -> int:
        """
        How many mailboxes the cache holds (for tests and operators).
        """
        return len(set(self._recent) | set(self._older))
