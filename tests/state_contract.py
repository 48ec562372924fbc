# -*- test-case-name: tests.test_state -*-
"""
The contract every L{IStateStore} must keep, as a mixin: a test case
inherits L{StateStoreContractTests} and L{SynchronousTestCase} and
supplies C{makeStore()} (and, if it can, C{failWritesOf()}).

The store's Deferreds must have fired when its calls return (a
synchronous C{runBlocking} such as L{tests.util.runNow}).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from directpush.interfaces import IStateStore

from .util import assertProvides

if TYPE_CHECKING:
    _Base = SynchronousTestCase
else:
    _Base = object

#: Keys whose prefixes must be matched literally: SQL LIKE wildcards and
#: escape character, GLOB wildcards, ASCII case, a regular expression dot.
WILDCARD_KEYS = [
    "%x",
    "A%b",
    "_y",
    "a%b",
    "a%c",
    "a*b",
    "a.b",
    "a?b",
    "a[b",
    "a\\b",
    "a_c",
    "ab",
    "abc",
    "axb",
    "zz",
]

#: Keys at the edges of text ordering: code points where UTF-16 order
#: differs from code point order (U+FF5E against an astral emoji), the
#: highest code point, the last one below the surrogates, NUL, and the two
#: Unicode normal forms of "é".
UNICODE_KEYS = [
    "a",
    "a\x00b",
    "a\U0010ffff",
    "a\U0010ffffb",
    "b",
    "e\u0301",
    "x\ud7ff",
    "x\ud7ffz",
    "x\ue000",
    "x\uffff",
    "\u00e9",
    "\uff5e",
    "\U0001f600",
    "\U0010ffff",
    "\U0010ffff\U0010ffff",
]


class StateStoreContractTests(_Base):
    """
    L{IStateStore} behaviour every implementation must show.
    """

    def makeStore(self) -> IStateStore:
        """
        A new, empty store.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement makeStore")

    def failWritesOf(self, store: IStateStore, key: str) -> None:
        """
        Make every later C{save} to C{store} fail when it comes to write
        C{key}, after writing the keys the mapping lists before it.
        Implementations that can inject such a failure override this.
        """
        raise SkipTest(f"{type(self).__name__} cannot inject a failure in the middle of a save")

    # Shorthands that insist the store answered at once and successfully.

    def save(self, store: IStateStore, user: str, device: str, values: Mapping[str, Optional[bytes]]) -> None:
        self.assertIsNone(self.successResultOf(store.save(user, device, values)))

    def load(self, store: IStateStore, user: str, device: str, key: str) -> Optional[bytes]:
        value: Optional[bytes] = self.successResultOf(store.load(user, device, key))
        return value

    def keys(self, store: IStateStore, user: str, device: str, prefix: str = "") -> List[str]:
        keys: List[str] = self.successResultOf(store.keys(user, device, prefix))
        return keys

    def devices(self, store: IStateStore, user: str) -> List[str]:
        devices: List[str] = self.successResultOf(store.devices(user))
        return devices

    def test_providesInterface(self) -> None:
        """
        A store instance fully provides L{IStateStore}.
        """
        assertProvides(self, IStateStore, self.makeStore())

    def test_emptyStore(self) -> None:
        """
        A new store has no values, keys or devices.
        """
        store = self.makeStore()
        self.assertIsNone(self.load(store, "alice", "phone", "k"))
        self.assertEqual(self.keys(store, "alice", "phone"), [])
        self.assertEqual(self.devices(store, "alice"), [])

    def test_loadMissing(self) -> None:
        """
        Loading a key that was never saved gives L{None}, even when the
        same user and device have other keys.
        """
        store = self.makeStore()
        self.save(store, "alice", "phone", {"k": b"v"})
        self.assertIsNone(self.load(store, "alice", "phone", "other"))
        self.assertIsNone(self.load(store, "alice", "phone", "K"))
        self.assertIsNone(self.load(store, "alice", "phone", "k "))

    def test_saveThenLoad(self) -> None:
        """
        A saved value loads back equal, as C{bytes}.
        """
        store = self.makeStore()
        self.save(store, "alice", "phone", {"synckey:5": b'{"key": "1"}'})
        value = self.load(store, "alice", "phone", "synckey:5")
        self.assertEqual(value, b'{"key": "1"}')
        self.assertIs(type(value), bytes)

    def test_overwrite(self) -> None:
        """
        Saving a key again replaces its value, also by a shorter one.
        """
        store = self.makeStore()
        self.save(store, "alice", "phone", {"k": b"first, long value"})
        self.save(store, "alice", "phone", {"k": b"2nd"})
        self.assertEqual(self.load(store, "alice", "phone", "k"), b"2nd")
        self.assertEqual(self.keys(store, "alice", "phone"), ["k"])

    def test_binaryValues(self) -> None:
        """
        Values are bytes, kept exactly: every byte value, NUL bytes,
        invalid UTF-8, and the empty value, which is not the same as no
        value.
        """
        store = self.makeStore()
        values: Dict[str, Optional[bytes]] = {
            "all": bytes(range(256)),
            "nul": b"\x00",
            "nuls": b"a\x00\x00b\x00",
            "invalid-utf8": b"\xff\xfe\xc3(",
            "utf16": "h\u00e9".encode("utf-16"),
            "empty": b"",
        }
        self.save(store, "alice", "phone", values)
        for key, value in values.items():
            loaded = self.load(store, "alice", "phone", key)
            self.assertEqual(loaded, value, key)
            self.assertIs(type(loaded), bytes, key)
        self.assertEqual(self.keys(store, "alice", "phone"), sorted(values))

    def test_largeValue(self) -> None:
        """
        A 5 MB value of random bytes loads back identical.
        """
        store = self.makeStore()
        big = random.Random(1).randbytes(5 * 1024 * 1024 + 3)
        self.save(store, "alice", "phone", {"big": big, "small": b"s"})
        self.assertEqual(self.load(store, "alice", "phone", "big"), big)
        self.assertEqual(self.load(store, "alice", "phone", "small"), b"s")

    def test_valueCopied(self) -> None:
        """
        The store keeps a copy of a bytes-like value: changing the saved
        C{bytearray} afterwards does not change the stored value.
        """
        store = self.makeStore()
        value = bytearray(b"before")
        self.save(store, "alice", "phone", {"k": value})  # type: ignore[dict-item]
        value[:] = b"after!"
        loaded = self.load(store, "alice", "phone", "k")
        self.assertEqual(loaded, b"before")
        self.assertIs(type(loaded), bytes)

    def test_saveSeveralKeys(self) -> None:
        """
        One save of several keys makes all of them visible together.
        """
        store = self.makeStore()
        values = {f"item:{i:03d}": f"value {i}".encode() for i in range(50)}
        self.save(store, "alice", "phone", values)
        self.assertEqual(self.keys(store, "alice", "phone"), sorted(values))
        for key, value in values.items():
            self.assertEqual(self.load(store, "alice", "phone", key), value)

    def test_saveFailureWritesNothing(self) -> None:
        """
        A save that fails in the middle of writing leaves the store as it
        was: keys written before the failure are not kept, deletions are
        undone, and later saves work.
        """
        store = self.makeStore()
        self.save(store, "alice", "phone", {"a": b"old a", "z": b"old z"})
        self.failWritesOf(store, "poison")
        try:
            d = store.save("alice", "phone", {"a": b"new a", "b": b"new b", "poison": b"p", "z": None})
        except Exception:
            self.fail("save raised instead of returning a failed Deferred")
        self.failureResultOf(d)
        self.assertEqual(self.load(store, "alice", "phone", "a"), b"old a")
        self.assertIsNone(self.load(store, "alice", "phone", "b"))
        self.assertIsNone(self.load(store, "alice", "phone", "poison"))
        self.assertEqual(self.load(store, "alice", "phone", "z"), b"old z")
        self.assertEqual(self.keys(store, "alice", "phone"), ["a", "z"])
        self.save(store, "alice", "phone", {"a": b"newer a", "z": None})
        self.assertEqual(self.load(store, "alice", "phone", "a"), b"newer a")
        self.assertEqual(self.keys(store, "alice", "phone"), ["a"])

    def test_noneDeletes(self) -> None:
        """
        Saving L{None} deletes a key; deleting a missing key is no error.
        """
        store = self.makeStore()
        self.save(store, "alice", "phone", {"a": b"1", "b": b"2"})
        self.save(store, "alice", "phone", {"a": None, "missing": None})
        self.assertIsNone(self.load(store, "alice", "phone", "a"))
        self.assertEqual(self.load(store, "alice", "phone", "b"), b"2")
        self.assertEqual(self.keys(store, "alice", "phone"), ["b"])

    def test_saveAndDeleteTogether(self) -> None:
        """
        One save may write some keys and delete others.
        """
        store = self.makeStore()
        self.save(store, "alice", "phone", {"old": b"1", "keep": b"2"})
        self.save(store, "alice", "phone", {"old": None, "new": b"3"})
        self.assertEqual(self.keys(store, "alice", "phone"), ["keep", "new"])
        self.assertEqual(self.load(store, "alice", "phone", "new"), b"3")

    def test_emptySave(self) -> None:
        """
        Saving no values succeeds and changes nothing.
        """
        store = self.makeStore()
        self.save(store, "alice", "phone", {"a": b"1"})
        self.save(store, "alice", "phone", {})
        self.save(store, "bob", "phone", {})
        self.assertEqual(self.keys(store, "alice", "phone"), ["a"])
        self.assertEqual(self.devices(store, "bob"), [])

    def test_keysSorted(self) -> None:
        """
        C{keys} lists every key, sorted by code point whatever the order
        of saving.
        """
        store = self.makeStore()
        keys = ["b", "a", "B", "a10", "a9", "\uff5e", "\U0001f600", "\u00e9", "e", " "]
        shuffled = list(keys)
        random.Random(2).shuffle(shuffled)
        for key in shuffled:
            self.save(store, "alice", "phone", {key: key.encode("utf-8")})
        self.assertEqual(self.keys(store, "alice", "phone"), sorted(keys))
        # Spelled out: sorted() is code point order, which is what we mean.
        self.assertEqual(
            self.keys(store, "alice", "phone"),
            [" ", "B", "a", "a10", "a9", "b", "e", "\u00e9", "\uff5e", "\U0001f600"],
        )

    def test_keysPrefix(self) -> None:
        """
        C{keys(prefix)} lists the keys that start with C{prefix}, a key
        equal to it included, and nothing else.
        """
        store = self.makeStore()
        self.save(
            store,
            "alice",
            "phone",
            {k: b"" for k in ["sync", "sync:1", "sync:2", "syncs", "synd", "syn", "folder:1", "Sync:3"]},
        )
        self.assertEqual(self.keys(store, "alice", "phone", "sync:"), ["sync:1", "sync:2"])
        self.assertEqual(self.keys(store, "alice", "phone", "sync"), ["sync", "sync:1", "sync:2", "syncs"])
        self.assertEqual(self.keys(store, "alice", "phone", "sync:1"), ["sync:1"])
        self.assertEqual(self.keys(store, "alice", "phone", "sync:10"), [])
        self.assertEqual(self.keys(store, "alice", "phone", "nothing"), [])
        self.assertEqual(len(self.keys(store, "alice", "phone", "")), 8)

    def test_keysPrefixIsLiteral(self) -> None:
        """
        Prefix characters have no special meaning: C{%} and C{_} are not
        LIKE wildcards, nor C{*}, C{?} and C{[} GLOB ones, C{\\} escapes
        nothing, and case matters.
        """
        store = self.makeStore()
        self.save(store, "alice", "phone", {k: b"" for k in WILDCARD_KEYS})
        self.assertEqual(self.keys(store, "alice", "phone", "a%"), ["a%b", "a%c"])
        self.assertEqual(self.keys(store, "alice", "phone", "a_"), ["a_c"])
        self.assertEqual(self.keys(store, "alice", "phone", "%"), ["%x"])
        self.assertEqual(self.keys(store, "alice", "phone", "_"), ["_y"])
        self.assertEqual(self.keys(store, "alice", "phone", "a\\"), ["a\\b"])
        self.assertEqual(self.keys(store, "alice", "phone", "a*"), ["a*b"])
        self.assertEqual(self.keys(store, "alice", "phone", "a?"), ["a?b"])
        self.assertEqual(self.keys(store, "alice", "phone", "a["), ["a[b"])
        self.assertEqual(self.keys(store, "alice", "phone", "a."), ["a.b"])
        self.assertEqual(self.keys(store, "alice", "phone", "A"), ["A%b"])
        self.assertEqual(self.keys(store, "alice", "phone", "%b"), [])
        prefixes = {k[:n] for k in WILDCARD_KEYS for n in range(len(k) + 2)}
        for prefix in sorted(prefixes | {"%%", "__", "a%%", "[", "\\"}):
            self.assertEqual(
                self.keys(store, "alice", "phone", prefix),
                sorted(k for k in WILDCARD_KEYS if k.startswith(prefix)),
                f"prefix {prefix!r}",
            )

    def test_unicodeKeys(self) -> None:
        """
        Keys (and users and devices) may hold any character, NUL and
        U+10FFFF included; they are kept exactly, without Unicode
        normalization, sorted by code point and matched by prefix exactly.
        """
        store = self.makeStore()
        user, device = "j\u00fcrgen@b\u00fccher.example", "\u624b\u673a\U0001f4f1"
        self.save(store, user, device, {k: k.encode("utf-8") for k in UNICODE_KEYS})
        for key in UNICODE_KEYS:
            self.assertEqual(self.load(store, user, device, key), key.encode("utf-8"), repr(key))
        self.assertEqual(self.keys(store, user, device), sorted(UNICODE_KEYS))
        self.assertEqual(self.keys(store, user, device, "\u00e9"), ["\u00e9"])
        self.assertEqual(self.keys(store, user, device, "e"), ["e\u0301"])
        self.assertEqual(self.keys(store, user, device, "a\x00"), ["a\x00b"])
        self.assertEqual(self.keys(store, user, device, "a\U0010ffff"), ["a\U0010ffff", "a\U0010ffffb"])
        prefixes = {k[:n] for k in UNICODE_KEYS for n in range(len(k) + 1)}
        for prefix in sorted(prefixes | {"x\ud7fe", "\U0010fffe", "a\U0010fffe"}):
            self.assertEqual(
                self.keys(store, user, device, prefix),
                sorted(k for k in UNICODE_KEYS if k.startswith(prefix)),
                f"prefix {prefix!r}",
            )
        self.assertEqual(self.devices(store, user), [device])
        self.assertIsNone(self.load(store, "jurgen@bucher.example", device, "a"))

    def test_devices(self) -> None:
        """
        C{devices(user)} lists, sorted and once each, the devices that have
        state for that user: never the per-user device C{""}, never another
        user's devices.
        """
        store = self.makeStore()
        self.save(store, "alice", "", {"policy": b"1"})
        self.save(store, "alice", "tablet", {"a": b"1", "b": b"2"})
        self.save(store, "alice", "phone", {"a": b"1"})
        self.save(store, "alice", "Phone", {"a": b"1"})
        self.save(store, "bob", "laptop", {"a": b"1"})
        self.save(store, "alice_", "watch", {"a": b"1"})
        self.save(store, "Alice", "car", {"a": b"1"})
        self.assertEqual(self.devices(store, "alice"), ["Phone", "phone", "tablet"])
        self.assertEqual(self.devices(store, "bob"), ["laptop"])
        self.assertEqual(self.devices(store, "alice%"), [])
        self.assertEqual(self.devices(store, "nobody"), [])

    def test_devicesOnlyUser(self) -> None:
        """
        A user with per-user values only has no devices.
        """
        store = self.makeStore()
        self.save(store, "alice", "", {"policy": b"1"})
        self.assertEqual(self.devices(store, "alice"), [])
        self.assertEqual(self.load(store, "alice", "", "policy"), b"1")

    def test_deviceGoneWithItsLastKey(self) -> None:
        """
        A device whose keys have all been deleted is no longer listed.
        """
        store = self.makeStore()
        self.save(store, "alice", "phone", {"a": b"1", "b": b"2"})
        self.save(store, "alice", "tablet", {"a": b"1"})
        self.save(store, "alice", "phone", {"a": None})
        self.assertEqual(self.devices(store, "alice"), ["phone", "tablet"])
        self.save(store, "alice", "phone", {"b": None})
        self.assertEqual(self.devices(store, "alice"), ["tablet"])

    def test_userIsolation(self) -> None:
        """
        Users do not share state, even with the same device and key, or
        with names that differ only in case or that prefix each other.
        """
        store = self.makeStore()
        users = ["alice", "Alice", "alice2", "alic", "alice_"]
        for user in users:
            self.save(store, user, "phone", {"k": user.encode(), user: b"own"})
            self.save(store, user, "", {"k": user.encode()})
        for user in users:
            self.assertEqual(self.load(store, user, "phone", "k"), user.encode())
            self.assertEqual(self.load(store, user, "", "k"), user.encode())
            self.assertEqual(self.keys(store, user, "phone"), sorted(["k", user]))
            self.assertEqual(self.devices(store, user), ["phone"])
        self.save(store, "alice", "phone", {"k": None})
        self.assertIsNone(self.load(store, "alice", "phone", "k"))
        self.assertEqual(self.load(store, "Alice", "phone", "k"), b"Alice")

    def test_deviceIsolation(self) -> None:
        """
        Devices of one user do not share state, and the per-user device
        C{""} is separate from them all.
        """
        store = self.makeStore()
        self.save(store, "alice", "phone", {"k": b"phone", "p": b"1"})
        self.save(store, "alice", "phone2", {"k": b"phone2"})
        self.save(store, "alice", "", {"k": b"user"})
        self.assertEqual(self.load(store, "alice", "phone", "k"), b"phone")
        self.assertEqual(self.load(store, "alice", "phone2", "k"), b"phone2")
        self.assertEqual(self.load(store, "alice", "", "k"), b"user")
        self.assertIsNone(self.load(store, "alice", "phone2", "p"))
        self.assertEqual(self.keys(store, "alice", "phone"), ["k", "p"])
        self.assertEqual(self.keys(store, "alice", "phone2"), ["k"])
        self.assertEqual(self.keys(store, "alice", ""), ["k"])
        self.save(store, "alice", "phone", {"k": None, "p": None})
        self.assertEqual(self.load(store, "alice", "phone2", "k"), b"phone2")
        self.assertEqual(self.load(store, "alice", "", "k"), b"user")
