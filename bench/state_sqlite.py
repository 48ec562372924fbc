"""
Throughput of L{directpush.state.sqlite.SQLiteStateStore}, single thread.

What it measures: saves per second (one key per save, each a committed,
fsynced transaction: WAL with C{synchronous=FULL}) and loads per second,
for 1 KB and 100 KB values, calling the store synchronously (no thread
pool, no reactor). Each row runs for about C{--seconds} seconds (at least
20 operations), so the whole run is bounded: about four times that.

Saves are dominated by fsync, so the numbers depend on the file system far
more than on the code: tmpfs is not a disk. Pick the directory with
C{--dir} (default: a new temporary directory, removed afterwards).

How to run it (standard library and directpush only):

    python bench/state_sqlite.py
    python bench/state_sqlite.py --dir /var/lib/directpush --seconds 1
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from typing import Any, Callable, List, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from directpush.state.sqlite import SQLiteStateStore

T = TypeVar("T")
KEYS = 100


def runNow(f: Callable[[], T]) -> "Deferred[T]":
    try:
        return succeed(f())
    except BaseException:
        return fail()


def result(d: "Deferred[Any]") -> Any:
    out: List[Any] = []
    d.addBoth(out.append)
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def rate(op: Callable[[int], None], seconds: float) -> float:
    """
    Operations per second of C{op(i)}, run for about C{seconds}.
    """
    done, started = 0, time.perf_counter()
    while True:
        op(done)
        done += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and done >= 20:
            return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="directory for the database (default: a temporary one)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per row (default 2)")
    args = parser.parse_args()

    directory = args.dir or tempfile.mkdtemp(prefix="directpush-bench-")
    path = FilePath(directory).child(f"bench-state-{os.getpid()}.sqlite")
    rng = random.Random(7)
    print(f"SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}, file {path.path}")
    print(f"{'value':>8} {'saves/s':>10} {'loads/s':>10} {'save MB/s':>10} {'load MB/s':>10}")
    try:
        for size in (1024, 100 * 1024):
            store = SQLiteStateStore(path, runNow)
            values = [rng.randbytes(size) for _ in range(KEYS)]
            # Each save stamps its counter into the value: SQLite skips the
            # write (and the fsync) when a row is overwritten with equal bytes.
            def save(i: int) -> None:
                value = i.to_bytes(8, "big") + values[i % KEYS][8:]
                result(store.save("bench", "device", {f"k{i % KEYS}": value}))

            saves = rate(save, args.seconds)
            loads = rate(lambda i: result(store.load("bench", "device", f"k{i * 7 % KEYS}")), args.seconds)
            result(store.close())
            for suffix in ("", "-wal", "-shm"):
                leftover = FilePath(path.path + suffix)
                if leftover.exists():
                    leftover.remove()
            label = f"{size // 1024} KB"
            print(
                f"{label:>8} {saves:>10.0f} {loads:>10.0f}"
                f" {saves * size / 1e6:>10.1f} {loads * size / 1e6:>10.1f}"
            )
    finally:
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
