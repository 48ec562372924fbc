# -*- test-case-name: tests.test_directory -*-
"""
The users this server knows, read from the same passwd file that
authenticates them (L{directpush.auth}).

A user name is either a plain name (C{alice}) or an e-mail address
(C{bob@example.net}); L{directpush.auth.validUserName} accepts both. A
plain user's address is C{name@domain} when a mail domain is configured;
without one it has no address, and its name stands in for one (so that
C{localUser("alice")} still finds C{alice}).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from .auth import PasswdFile, RunBlocking, parsePasswd
from .interfaces import IDirectory

log = Logger()


@attrs.frozen
class Entry:
    """
    One user as the directory shows it.

    @ivar user: the user name, as in the passwd file.
    @ivar address: the user's address: the name itself for address-form
        names, C{name@domain} for plain names when a domain is configured,
        else the plain name.
    @ivar display: the display name (the local part of the address, until
        the users file can hold real names).
    """

    user: str
    address: str
    display: str

    def matches(self, prefix: str) -> bool:
        """
        Does the (lower-case) C{prefix} start the user name, the address or
        the address's local part, ignoring case?
        """
        return any(
            value.lower().startswith(prefix)
            for value in (self.user, self.address, self.address.partition("@")[0])
        )


def entriesFor(users: Mapping[str, str], domain: Optional[str]) -> List[Entry]:
    """
    The directory entries for the user names of a passwd file, sorted by
    display name, then address (both ignoring case), then user name.
    """
    entries = []
    for name in users:
        if "@" in name:
            address = name
        elif domain:
            address = f"{name}@{domain}"
        else:
            address = name
        entries.append(Entry(name, address, address.partition("@")[0]))
    entries.sort(key=lambda e: (e.display.lower(), e.address.lower(), e.user))
    return entries


def _addressIndex(entries: List[Entry]) -> Dict[str, str]:
    """
    Lower-case address -> user name, for local delivery.

    Two users can claim one address: C{Bob} and C{bob}, or a plain C{bob}
    (with domain C{example.net}) and C{bob@example.net}. The one whose
    name I{is} the address wins, then the name that sorts first; each
    collision is logged once per read, so an operator can fix the file.
    """
    candidates: Dict[str, List[str]] = {}
    for e in entries:
        keys = {e.address.lower()}
        if "@" not in e.user:
            # A plain name also receives mail sent to the bare name, as an
            # MTA delivers an unqualified address locally.
            keys.add(e.user.lower())
        for key in keys:
            candidates.setdefault(key, []).append(e.user)
    index = {}
    for key, users in candidates.items():
        users.sort(key=lambda u: ("@" not in u, u))
        if len(users) > 1:
            log.warn(
                "users {users} all receive mail for {address}; delivering to {winner}",
                users=users,
                address=key,
                winner=users[0],
            )
        index[key] = users[0]
    return index


class _Snapshot:
    """
    One parse of the users file, with what it was read from.
    """

    def __init__(self, stamp: Optional[Tuple[int, int, int]], entries: List[Entry]) -> None:
        self.stamp = stamp
        self.entries = entries
        self.index = _addressIndex(entries)


@implementer(IDirectory)
class PasswdDirectory:
    """
    An L{IDirectory} over a passwd file, re-read whenever its modification
    time, size or inode changes (so C{python -m directpush.users add} takes
    effect at once, as it does for logins).

    The file is read by this class rather than through L{PasswdFile}'s
    cache, which is private to the checker; both watch the same file.
    Every read runs through C{runBlocking}, off the reactor thread.
    """

    def __init__(
        self, passwd: PasswdFile, runBlocking: RunBlocking[Any], domain: Optional[str]
    ) -> None:
        """
        @param passwd: the users file (only its path is used).
        @param runBlocking: runs a blocking callable off the reactor thread.
        @param domain: the mail domain of plain user names, or L{None}.
        """
        self._path = passwd.path
        self._runBlocking = runBlocking
        # "@example.org" and "example.org" both mean the domain example.org.
        self._domain = (domain or "").strip().lstrip("@") or None
        # Replaced whole, never mutated, so a thread reading it while another
        # re-reads the file always sees a consistent snapshot.
        self._snapshot = _Snapshot(None, [])

    def _current(self) -> _Snapshot:
        """
        The users as the file holds them now. Blocking.
        """
        try:
            st = os.stat(self._path.path)
        except OSError:
            if self._snapshot.stamp is not None:
                log.warn("users file {path} is gone; the directory is empty", path=self._path.path)
            self._snapshot = _Snapshot(None, [])
            return self._snapshot
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        snapshot = self._snapshot
        if stamp != snapshot.stamp:
            with open(self._path.path, encoding="utf-8", errors="replace") as f:
                users = parsePasswd(f.read())
            snapshot = _Snapshot(stamp, entriesFor(users, self._domain))
            self._snapshot = snapshot
        return snapshot

    def lookup(self, query: str, limit: int) -> "Deferred[List[Mapping[str, str]]]":
        """
        Users whose name, address or address local part starts with
        C{query}, ignoring case; sorted by display name, at most C{limit}.
        """
        prefix = query.strip().lower()

        def search() -> List[Mapping[str, str]]:
            if limit <= 0:
                return []
            found: List[Mapping[str, str]] = []
            for entry in self._current().entries:
                if entry.matches(prefix):
                    found.append({"name": entry.display, "address": entry.address})
                    if len(found) >= limit:
                        break
            return found

        return self._runBlocking(search)

    def localUser(self, address: str) -> "Deferred[Optional[str]]":
        """
        The user receiving mail for C{address} (compared ignoring case), or
        L{None} when no user does.
        """
        key = address.strip().lower()

        def find() -> Optional[str]:
            return self._current().index.get(key) if key else None

        return self._runBlocking(find)


@implementer(IDirectory)
class EmptyDirectory:
    """
    A directory that knows nobody: the IMAP bridge has no users file, so
    the GAL is empty and every recipient goes to the smarthost.
    """

    def lookup(self, query: str, limit: int) -> "Deferred[List[Mapping[str, str]]]":
        return succeed([])

    def localUser(self, address: str) -> "Deferred[Optional[str]]":
        return succeed(None)
