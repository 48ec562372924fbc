# -*- test-case-name: tests.test_state -*-
"""
The embedded state store: one SQLite file (by convention
C{DATA/state.sqlite}) holding the device and sync state of every user.

One table, C{state(user, device, key, value BLOB)}, keyed by all three
names. The file is in WAL mode, so readers never wait for the writer, with
C{synchronous=FULL}, so a committed save has reached the disk before its
L{Deferred} fires. Every call runs through the injected C{runBlocking}
(production: a thread pool; tests: synchronously), never on the reactor
thread. Several processes may share the file: writers queue on SQLite's
file lock for up to C{busyTimeout} seconds.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.filepath import FilePath
from zope.interface import implementer

from ..interfaces import IStateStore

T = TypeVar("T")
#: Runs a blocking function off the reactor thread (the shape
#: L{directpush.auth} uses; kept here so the store does not import cred).
RunBlocking = Callable[[Callable[[], T]], "Deferred[T]"]

log = Logger()

#: SQLite's page cache for the state file, KiB.
CACHE_KIB = 512

#: The schema this code writes, stored in the file as C{PRAGMA user_version}.
#: Raise it with every schema change and teach L{_prepareSchema} the step.
SCHEMA_VERSION = 1

#: Seconds a writer waits for another process's write to finish before it
#: fails with C{sqlite3.OperationalError: database is locked}.
DEFAULT_BUSY_TIMEOUT = 10.0

# A rowid table, not WITHOUT ROWID: values may be megabytes, and SQLite
# advises WITHOUT ROWID only for rows well below a page.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    user   TEXT NOT NULL,
    device TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  BLOB NOT NULL,
    PRIMARY KEY (user, device, key)
)
"""


class SchemaVersionError(Exception):
    """
    The state file was written by a newer directpush, whose schema this one
    does not know; opening it could corrupt it.
    """


class StoreClosed(Exception):
    """
    The store was used after L{SQLiteStateStore.close}.
    """


def _prefixEnd(prefix: str) -> Optional[str]:
    """
    The least string above every string that starts with C{prefix}, in code
    point order (which is SQLite's C{BINARY} order of UTF-8 text), or
    L{None} when no string is (C{prefix} is empty or all U+10FFFF).

    With it, C{keys()} is an index range, C{key >= prefix AND key < end}:
    exact for every character, where C{LIKE} would treat C{%} and C{_} as
    wildcards and ignore ASCII case.
    """
    stem = prefix.rstrip("\U0010ffff")
    if not stem:
        return None
    following = ord(stem[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:
        # Surrogates cannot be encoded as UTF-8, so no stored key holds one.
        following = 0xE000
    return stem[:-1] + chr(following)


def _createPrivate(path: FilePath[str]) -> bool:
    """
    Create C{path} empty and readable by its owner only, unless it exists.
    SQLite gives its C{-wal} and C{-shm} files the mode of the database, so
    they are private too.

    @return: whether the file was created.
    """
    try:
        fd = os.open(path.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    # The umask can only take bits away from 0600, but one such as 0277
    # would leave the owner unable to write.
    os.chmod(path.path, 0o600)
    return True


def _userVersion(connection: sqlite3.Connection) -> int:
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    return version


def _refuseNewer(path: FilePath[str], version: int) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path.path} has state schema version {version}, but this directpush "
            f"knows versions up to {SCHEMA_VERSION} only: run a newer directpush "
            "or restore the file from a backup"
        )


def _prepareSchema(connection: sqlite3.Connection, path: FilePath[str]) -> None:
    """
    Create the table in a new file or check the version of an existing
    one, inside a write transaction so that two processes starting at once
    do not both create it.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = _userVersion(connection)
        _refuseNewer(path, version)
        if version < 1:
            connection.execute(_SCHEMA)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            log.info("created state schema {version} in {path}", version=SCHEMA_VERSION, path=path.path)
        connection.execute("COMMIT")
    except BaseException:
        _rollback(connection)
        raise


def _openDatabase(path: FilePath[str], busyTimeout: float) -> sqlite3.Connection:
    """
    Open (creating if need be) the state file, set the connection up and
    make sure the schema is one this code knows.
    """
    _createPrivate(path)
    # isolation_level=None: the sqlite3 module opens no transactions behind
    # our back; save() issues BEGIN IMMEDIATE ... COMMIT itself.
    # check_same_thread=False: a pool thread other than the opener may use
    # the connection; SQLiteStateStore's lock keeps it to one at a time.
    connection = sqlite3.connect(
        path.path, timeout=busyTimeout, isolation_level=None, check_same_thread=False
    )
    try:
        # Already set by timeout=; stated again so that it is visible here.
        connection.execute(f"PRAGMA busy_timeout = {int(busyTimeout * 1000)}")
        # Check the version before changing anything in the file: a newer
        # directpush may have chosen other settings.
        _refuseNewer(path, _userVersion(connection))
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            # E.g. on a network file system without shared memory; still
            # correct, but readers and the writer now block each other.
            log.warn(
                "state file {path} stays in journal mode {mode}, not WAL",
                path=path.path,
                mode=mode,
            )
        # In WAL mode NORMAL may lose the last commits on power loss; FULL
        # syncs the WAL at every commit, so a save is durable when it returns.
        connection.execute("PRAGMA synchronous = FULL")
        # SQLite's own page cache (2 MiB by default) only repeats what the
        # kernel's page cache already holds of the file; it is the
        # server's memory, not the kernel's, that devices are counted in.
        connection.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        _prepareSchema(connection, path)
    except BaseException:
        connection.close()
        raise
    return connection


def _rollback(connection: sqlite3.Connection) -> None:
    """
    Roll back the open transaction, if any, without hiding the error that
    got us here behind one from the rollback.
    """
    try:
        # A no-op when SQLite has already rolled back (e.g. after SQLITE_FULL).
        connection.rollback()
    except sqlite3.Error:
        log.failure("rollback of the state store failed")


def _asBytes(value: Optional[bytes]) -> Optional[bytes]:
    """
    A private copy of a value, so that a caller changing its bytearray
    after save() returns cannot change what is written.

    @raise TypeError: for anything but L{None} and bytes-like objects (in
        particular C{str} and C{int}, which C{bytes()} would accept).
    """
    if value is None:
        return None
    return bytes(memoryview(value))


@implementer(IStateStore)
@attrs.define(eq=False)
class SQLiteStateStore:
    """
    L{IStateStore} in one SQLite file.

    There is one connection, opened on first use in a C{runBlocking}
    thread, and a lock around every use of it. A SQLite connection must not
    be used by two threads at once: a transaction belongs to the
    connection, so another thread's statement would land inside (and be
    rolled back with) this one's C{BEGIN IMMEDIATE ... COMMIT}, and the
    sqlite3 module's cursors and statement cache are not thread-safe. One
    connection also keeps this process to one writer, which SQLite would
    impose anyway; readers in other processes are not blocked (WAL).

    Calls issued together may run in any order if C{runBlocking} has
    several threads: wait for a save's L{Deferred} before relying on it.

    @ivar _path: the database file; its directory must exist.
    @ivar _runBlocking: runs each database call off the reactor thread.
    @ivar _busyTimeout: seconds to wait for another process's write lock.
    """

    _path: FilePath[str]
    _runBlocking: RunBlocking[Any]
    _busyTimeout: float = DEFAULT_BUSY_TIMEOUT
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False, repr=False)
    _connection: Optional[sqlite3.Connection] = attrs.field(default=None, init=False, repr=False)
    _closed: bool = attrs.field(default=False, init=False)
    # Set on the caller's thread when a call is first scheduled.
    _used: bool = attrs.field(default=False, init=False, repr=False)

    def open(self) -> "Deferred[None]":
        """
        Open the file now rather than on first use, so that a bad path or
        a L{SchemaVersionError} shows at startup. Idempotent.
        """
        return self._run(lambda connection: None)

    def close(self) -> "Deferred[None]":
        """
        Close the connection after any call in progress; later calls fail
        with L{StoreClosed}. Idempotent.
        """

        def closeLocked() -> None:
            with self._lock:
                self._closed = True
                if self._connection is not None:
                    # The last connection to close checkpoints and removes the WAL.
                    self._connection.close()
                    self._connection = None

        if not self._used:
            # Never used: nothing to hand to a thread.
            self._closed = True
            return succeed(None)
        return self._runBlocking(closeLocked)

    def load(self, user: str, device: str, key: str) -> "Deferred[Optional[bytes]]":
        def load(connection: sqlite3.Connection) -> Optional[bytes]:
            row = connection.execute(
                "SELECT value FROM state WHERE user = ? AND device = ? AND key = ?",
                (user, device, key),
            ).fetchone()
            return None if row is None else bytes(row[0])

        return self._run(load)

    def keys(self, user: str, device: str, prefix: str = "") -> "Deferred[List[str]]":
        end = _prefixEnd(prefix)

        def keys(connection: sqlite3.Connection) -> List[str]:
            if end is None:
                cursor = connection.execute(
                    "SELECT key FROM state WHERE user = ? AND device = ? AND key >= ? ORDER BY key",
                    (user, device, prefix),
                )
            else:
                cursor = connection.execute(
                    "SELECT key FROM state WHERE user = ? AND device = ? AND key >= ? AND key < ?"
                    " ORDER BY key",
                    (user, device, prefix, end),
                )
            return [key for (key,) in cursor]

        return self._run(keys)

    def save(self, user: str, device: str, values: Mapping[str, Optional[bytes]]) -> "Deferred[None]":
        # Copy now, in the caller's thread: the caller may change the mapping
        # or its bytearrays while a pool thread writes.
        try:
            rows = [(key, _asBytes(value)) for key, value in values.items()]
        except TypeError:
            return fail()
        if not rows:
            return succeed(None)
        return self._run(lambda connection: self._save(connection, user, device, rows))

    def devices(self, user: str) -> "Deferred[List[str]]":
        def devices(connection: sqlite3.Connection) -> List[str]:
            cursor = connection.execute(
                "SELECT DISTINCT device FROM state WHERE user = ? AND device != '' ORDER BY device",
                (user,),
            )
            return [device for (device,) in cursor]

        return self._run(devices)

    def _run(self, f: Callable[[sqlite3.Connection], T]) -> "Deferred[T]":
        """
        Run C{f} with the connection, holding the lock, through runBlocking.
        """
        self._used = True

        def locked() -> T:
            with self._lock:
                if self._closed:
                    raise StoreClosed(f"the state store {self._path.path} is closed")
                if self._connection is None:
                    self._connection = _openDatabase(self._path, self._busyTimeout)
                return f(self._connection)

        return self._runBlocking(locked)

    def _save(
        self,
        connection: sqlite3.Connection,
        user: str,
        device: str,
        rows: Sequence[Tuple[str, Optional[bytes]]],
    ) -> None:
        """
        Write C{rows} in one transaction: all of them or, on any error,
        none. IMMEDIATE takes the write lock at once, so the transaction
        cannot fail later when a reader would have to become a writer.
        """
        connection.execute("BEGIN IMMEDIATE")
        try:
            for key, value in rows:
                self._writeRow(connection, user, device, key, value)
            connection.execute("COMMIT")
        except BaseException:
            _rollback(connection)
            raise

    def _writeRow(
        self, connection: sqlite3.Connection, user: str, device: str, key: str, value: Optional[bytes]
    ) -> None:
        """
        Write or delete one key, inside L{_save}'s transaction.
        """
        if value is None:
            connection.execute(
                "DELETE FROM state WHERE user = ? AND device = ? AND key = ?", (user, device, key)
            )
        else:
            connection.execute(
                "INSERT INTO state (user, device, key, value) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (user, device, key) DO UPDATE SET value = excluded.value",
                (user, device, key, value),
            )
