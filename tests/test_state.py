# -*- test-case-name: tests.test_state -*-
"""
Tests for L{directpush.state}: the L{IStateStore} contract against the
memory and SQLite stores, then what only the SQLite store promises
(durability across restarts, a private file, transactions, PRAGMAs,
schema versions, threads and several processes on one file).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from directpush.interfaces import IStateStore
from directpush.state.memory import MemoryStateStore
from directpush.state.sqlite import (
    SCHEMA_VERSION,
    SchemaVersionError,
    SQLiteStateStore,
    StoreClosed,
    _prefixEnd,
)

from .state_contract import StateStoreContractTests
from .util import runNow


def _mode(path: str) -> int:
    """
    The permission bits of the file at C{path}.
    """
    return stat.S_IMODE(os.stat(path).st_mode)


class _FailingDict(Dict[Tuple[str, str, str], bytes]):
    """
    The memory store's dictionary, refusing to store one key.
    """

    poison: str = ""

    def __setitem__(self, k: Tuple[str, str, str], v: bytes) -> None:
        if k[2] == self.poison:
            raise RuntimeError("injected failure")
        super().__setitem__(k, v)


class MemoryStateStoreTests(StateStoreContractTests, SynchronousTestCase):
    """
    The contract, against L{MemoryStateStore}.
    """

    def makeStore(self) -> IStateStore:
        return MemoryStateStore()

    def failWritesOf(self, store: IStateStore, key: str) -> None:
        assert isinstance(store, MemoryStateStore)
        failing = _FailingDict(store._values)
        failing.poison = key
        store._values = failing


def _sqliteStore(
    case: SynchronousTestCase, path: Optional[FilePath[str]] = None, **kw: Any
) -> SQLiteStateStore:
    """
    A synchronous L{SQLiteStateStore} in a new file (or C{path}), closed
    when the test ends.
    """
    store = SQLiteStateStore(path or FilePath(case.mktemp()), runNow, **kw)
    case.addCleanup(store.close)
    return store


def _connection(case: SynchronousTestCase, store: SQLiteStateStore) -> sqlite3.Connection:
    """
    The store's own connection, opened if need be.
    """
    case.successResultOf(store.open())
    connection = store._connection
    assert connection is not None
    return connection


class SQLiteStateStoreContractTests(StateStoreContractTests, SynchronousTestCase):
    """
    The contract, against L{SQLiteStateStore} run synchronously.
    """

    def makeStore(self) -> IStateStore:
        return _sqliteStore(self)

    def failWritesOf(self, store: IStateStore, key: str) -> None:
        assert isinstance(store, SQLiteStateStore)
        # A trigger makes SQLite itself fail the statement, as a full disk
        # or a constraint would, leaving the transaction for save() to undo.
        quoted = key.replace("'", "''")
        _connection(self, store).execute(
            f"CREATE TEMP TRIGGER failWrites BEFORE INSERT ON main.state WHEN NEW.key = '{quoted}'"
            " BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )


def _call(d: "Deferred[Any]") -> Any:
    """
    The result of a Deferred that has fired (from another thread than the
    reactor's, where successResultOf is not ours to use); raise its error.
    """
    results: List[Any] = []
    d.addBoth(results.append)
    [result] = results
    if isinstance(result, Failure):
        result.raiseException()
    return result


def _runThreads(targets: List[Callable[[], None]]) -> List[BaseException]:
    """
    Run each of C{targets} in its own thread, all started together.

    @return: the errors they raised.
    """
    errors: List[BaseException] = []
    start = threading.Barrier(len(targets))

    def run(target: Callable[[], None]) -> None:
        try:
            start.wait()
            target()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


class SQLiteStateStoreTests(SynchronousTestCase):
    """
    What L{SQLiteStateStore} promises beyond the contract.
    """

    def test_survivesRestart(self) -> None:
        """
        Values saved before the store is closed are there when the file is
        opened again, as after a server restart.
        """
        path = FilePath(self.mktemp())
        store = SQLiteStateStore(path, runNow)
        self.successResultOf(store.save("alice", "phone", {"k": b"v", "gone": b"x"}))
        self.successResultOf(store.save("alice", "phone", {"gone": None}))
        self.successResultOf(store.close())
        again = _sqliteStore(self, path)
        self.assertEqual(self.successResultOf(again.load("alice", "phone", "k")), b"v")
        self.assertEqual(self.successResultOf(again.keys("alice", "phone")), ["k"])
        self.assertEqual(self.successResultOf(again.devices("alice")), ["phone"])

    def test_durableWithoutClose(self) -> None:
        """
        A save is committed when its Deferred fires: another connection
        (another process) sees it while the store is still open.
        """
        path = FilePath(self.mktemp())
        store = _sqliteStore(self, path)
        self.successResultOf(store.save("alice", "phone", {"k": b"v"}))
        other = sqlite3.connect(path.path)
        self.addCleanup(other.close)
        self.assertEqual(
            other.execute("SELECT user, device, key, value FROM state").fetchall(),
            [("alice", "phone", "k", b"v")],
        )

    def test_fileIsPrivate(self) -> None:
        """
        A new state file, and the WAL and shared-memory files beside it,
        can be read and written by their owner only.
        """
        path = FilePath(self.mktemp())
        store = _sqliteStore(self, path)
        self.successResultOf(store.save("alice", "phone", {"k": b"v"}))
        for name in [path.path, path.path + "-wal", path.path + "-shm"]:
            self.assertEqual(_mode(name), 0o600, name)

    def test_existingFileModeKept(self) -> None:
        """
        The mode of an existing file is the administrator's: it is not
        changed.
        """
        path = FilePath(self.mktemp())
        path.touch()
        path.chmod(0o640)
        store = _sqliteStore(self, path)
        self.successResultOf(store.save("alice", "phone", {"k": b"v"}))
        self.assertEqual(_mode(path.path), 0o640)

    def test_pragmas(self) -> None:
        """
        The connection uses WAL, C{synchronous=FULL} (2), a small page
        cache and the busy timeout it was given; the file records the
        schema version.
        """
        store = _sqliteStore(self, busyTimeout=2.5)
        connection = _connection(self, store)
        self.assertEqual(connection.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(connection.execute("PRAGMA synchronous").fetchone()[0], 2)
        self.assertEqual(connection.execute("PRAGMA busy_timeout").fetchone()[0], 2500)
        self.assertEqual(connection.execute("PRAGMA cache_size").fetchone()[0], -512)
        self.assertEqual(connection.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)
        self.assertFalse(connection.in_transaction)

    def test_rollbackOnFailureMidway(self) -> None:
        """
        When writing fails after some keys of a save were written, the
        transaction is rolled back: nothing of the save remains, the error
        reaches the caller, and no transaction is left open.
        """
        store = _sqliteStore(self)
        self.successResultOf(store.save("alice", "phone", {"a": b"old", "c": b"old c"}))
        writeRow = SQLiteStateStore._writeRow
        written: List[str] = []

        def failThird(
            self: SQLiteStateStore,
            connection: sqlite3.Connection,
            user: str,
            device: str,
            key: str,
            value: Optional[bytes],
        ) -> None:
            if len(written) == 2:
                raise sqlite3.OperationalError("disk I/O error (injected)")
            writeRow(self, connection, user, device, key, value)
            written.append(key)

        self.patch(SQLiteStateStore, "_writeRow", failThird)
        f = self.failureResultOf(store.save("alice", "phone", {"a": b"new", "b": b"new b", "c": None}))
        f.trap(sqlite3.OperationalError)
        self.assertEqual(written, ["a", "b"])
        self.assertFalse(_connection(self, store).in_transaction)
        self.assertEqual(self.successResultOf(store.load("alice", "phone", "a")), b"old")
        self.assertEqual(self.successResultOf(store.keys("alice", "phone")), ["a", "c"])

    def test_badValueWritesNothing(self) -> None:
        """
        A value that is not bytes-like (C{str}, C{int}) fails the whole
        save, as a failed Deferred, before anything is written.
        """
        store = _sqliteStore(self)
        for bad in ["text", 5]:
            d = store.save("alice", "phone", {"a": b"1", "b": bad})  # type: ignore[dict-item]
            self.failureResultOf(d, TypeError)
        self.assertEqual(self.successResultOf(store.keys("alice", "phone")), [])

    def test_mappingCopiedAtCall(self) -> None:
        """
        C{save} takes its values when called, not when the pool thread gets
        to them: a caller changing the mapping afterwards changes nothing.
        """
        pending: List[Callable[[], Any]] = []

        def later(f: Callable[[], Any]) -> "Deferred[Any]":
            pending.append(f)
            return Deferred()

        store = SQLiteStateStore(FilePath(self.mktemp()), later)
        values: Dict[str, Optional[bytes]] = {"a": b"1"}
        store.save("alice", "phone", values)
        values["a"] = b"changed"
        values["b"] = b"added"
        for f in pending:
            f()
        connection = store._connection
        assert connection is not None
        self.addCleanup(connection.close)
        self.assertEqual(connection.execute("SELECT key, value FROM state").fetchall(), [("a", b"1")])

    def test_newerSchemaRefused(self) -> None:
        """
        A file written by a newer directpush (higher C{user_version}) is
        refused with L{SchemaVersionError} naming both versions, and is
        left unchanged.
        """
        path = FilePath(self.mktemp())
        raw = sqlite3.connect(path.path)
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        raw.close()
        before = path.getContent()
        store = _sqliteStore(self, path)
        f = self.failureResultOf(store.open(), SchemaVersionError)
        message = str(f.value)
        self.assertIn(f"version {SCHEMA_VERSION + 1}", message)
        self.assertIn(f"up to {SCHEMA_VERSION}", message)
        self.assertIn(path.path, message)
        self.failureResultOf(store.load("alice", "phone", "k"), SchemaVersionError)
        self.assertEqual(path.getContent(), before)

    def test_currentSchemaKept(self) -> None:
        """
        Opening a file of the current version keeps its data; the
        version is written once, when the file is created.
        """
        path = FilePath(self.mktemp())
        first = SQLiteStateStore(path, runNow)
        self.successResultOf(first.save("alice", "", {"k": b"v"}))
        self.successResultOf(first.close())
        raw = sqlite3.connect(path.path)
        self.addCleanup(raw.close)
        self.assertEqual(raw.execute("PRAGMA user_version").fetchone()[0], SCHEMA_VERSION)
        store = _sqliteStore(self, path)
        self.assertEqual(self.successResultOf(store.load("alice", "", "k")), b"v")

    def test_notADatabase(self) -> None:
        """
        A file that is not SQLite fails with C{sqlite3.DatabaseError}.
        """
        path = FilePath(self.mktemp())
        path.setContent(b"this is not a database, it is a text file of some length " * 20)
        store = _sqliteStore(self, path)
        self.failureResultOf(store.open(), sqlite3.DatabaseError)

    def test_close(self) -> None:
        """
        After C{close}, calls fail with L{StoreClosed}; closing twice, or
        a store never opened, is fine.
        """
        store = SQLiteStateStore(FilePath(self.mktemp()), runNow)
        self.successResultOf(store.close())
        self.successResultOf(store.close())
        self.failureResultOf(store.load("alice", "phone", "k"), StoreClosed)
        opened = SQLiteStateStore(FilePath(self.mktemp()), runNow)
        self.successResultOf(opened.open())
        self.successResultOf(opened.close())
        self.failureResultOf(opened.save("alice", "phone", {"k": b"v"}), StoreClosed)
        self.failureResultOf(opened.keys("alice", "phone"), StoreClosed)
        self.failureResultOf(opened.devices("alice"), StoreClosed)
        self.assertIsNone(opened._connection)

    def test_twoStoresOneFile(self) -> None:
        """
        Two stores on one file (as two server processes) see each other's
        saves at once.
        """
        path = FilePath(self.mktemp())
        one, two = _sqliteStore(self, path), _sqliteStore(self, path)
        self.successResultOf(one.save("alice", "phone", {"k": b"1"}))
        self.assertEqual(self.successResultOf(two.load("alice", "phone", "k")), b"1")
        self.successResultOf(two.save("alice", "phone", {"k": b"2", "j": b"3"}))
        self.assertEqual(self.successResultOf(one.load("alice", "phone", "k")), b"2")
        self.assertEqual(self.successResultOf(one.keys("alice", "phone")), ["j", "k"])

    def test_busyTimeout(self) -> None:
        """
        While another process holds the write lock, a save waits for the
        busy timeout and then fails with "database is locked", leaving no
        transaction open; readers are not blocked (WAL); once the lock is
        released, saves work again.
        """
        path = FilePath(self.mktemp())
        store = _sqliteStore(self, path, busyTimeout=0.1)
        self.successResultOf(store.save("alice", "phone", {"k": b"1"}))
        other = sqlite3.connect(path.path, isolation_level=None)
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        f = self.failureResultOf(store.save("alice", "phone", {"k": b"2"}), sqlite3.OperationalError)
        self.assertGreaterEqual(time.monotonic() - started, 0.09)
        self.assertIn("locked", str(f.value))
        self.assertFalse(_connection(self, store).in_transaction)
        self.assertEqual(self.successResultOf(store.load("alice", "phone", "k")), b"1")
        other.execute("ROLLBACK")
        self.successResultOf(store.save("alice", "phone", {"k": b"3"}))
        self.assertEqual(self.successResultOf(store.load("alice", "phone", "k")), b"3")

    def test_threads(self) -> None:
        """
        Eight threads sharing one store, saving, loading and listing at
        once (as a thread pool would), raise no error, and every write
        lands.
        """
        store = _sqliteStore(self)
        threads, rounds = 8, 25

        def work(n: int) -> Callable[[], None]:
            def run() -> None:
                device = f"device{n % 3}"
                for i in range(rounds):
                    key = f"t{n:02d}:{i:03d}"
                    _call(store.save("alice", device, {key: key.encode(), f"t{n:02d}:last": str(i).encode()}))
                    if _call(store.load("alice", device, key)) != key.encode():
                        raise AssertionError(f"lost {key}")
                    _call(store.keys("alice", device, f"t{n:02d}:"))
                    _call(store.devices("alice"))

            return run

        self.assertEqual(_runThreads([work(n) for n in range(threads)]), [])
        for n in range(threads):
            keys = self.successResultOf(store.keys("alice", f"device{n % 3}", f"t{n:02d}:"))
            self.assertEqual(keys, sorted([f"t{n:02d}:{i:03d}" for i in range(rounds)] + [f"t{n:02d}:last"]))
            self.assertEqual(
                self.successResultOf(store.load("alice", f"device{n % 3}", f"t{n:02d}:last")),
                str(rounds - 1).encode(),
            )
        self.assertEqual(self.successResultOf(store.devices("alice")), ["device0", "device1", "device2"])

    def test_saveSeenWhole(self) -> None:
        """
        A reader in another connection (another process) never sees half a
        save: while one thread saves C{a} and C{b} together again and
        again, every snapshot read elsewhere has them equal.
        """
        path = FilePath(self.mktemp())
        store = _sqliteStore(self, path)
        self.successResultOf(store.save("alice", "phone", {"a": b"0", "b": b"0"}))
        done = threading.Event()
        seen: List[Tuple[Tuple[str, bytes], ...]] = []

        def write() -> None:
            try:
                for i in range(1, 101):
                    _call(store.save("alice", "phone", {"a": str(i).encode(), "b": str(i).encode()}))
            finally:
                done.set()

        def read() -> None:
            reader = sqlite3.connect(path.path)
            try:
                while not done.is_set():
                    rows = reader.execute(
                        "SELECT key, value FROM state WHERE user = 'alice' AND device = 'phone' ORDER BY key"
                    ).fetchall()
                    seen.append(tuple(rows))
            finally:
                reader.close()

        self.assertEqual(_runThreads([write, read]), [])
        self.assertTrue(seen)
        torn = [rows for rows in seen if len(rows) != 2 or rows[0][1] != rows[1][1]]
        self.assertEqual(torn, [])
        self.assertEqual(self.successResultOf(store.load("alice", "phone", "b")), b"100")

    def test_prefixEnd(self) -> None:
        """
        The upper bound of a prefix range is the prefix with its last
        character raised, past trailing U+10FFFF and over the surrogates;
        there is none for an empty or all-U+10FFFF prefix.
        """
        self.assertEqual(_prefixEnd("abc"), "abd")
        self.assertEqual(_prefixEnd("a%"), "a&")
        self.assertEqual(_prefixEnd("a\U0010ffff\U0010ffff"), "b")
        self.assertEqual(_prefixEnd("x\ud7ff"), "x\ue000")
        self.assertEqual(_prefixEnd("a\x00"), "a\x01")
        self.assertIsNone(_prefixEnd(""))
        self.assertIsNone(_prefixEnd("\U0010ffff\U0010ffff"))
