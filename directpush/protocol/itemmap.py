# -*- test-case-name: tests.test_itemmap -*-
"""
The items a device has in one collection, as a Sync state holds them:
uid -> flag bits.

Every Sync request loads this map, changes it and stores it again, so in a
big folder it is the request's biggest object: as a dict, some 100 bytes
an item (a string per uid, a dict slot). Maildir and IMAP uids are
numbers, mostly dense, so L{ItemMap} keeps those as one byte each in a
bytearray indexed by the number; any other uid goes to a dict beside it.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from typing import Any, Dict, Iterable, Iterator, List, Mapping, MutableMapping, Tuple

__all__ = ["ItemMap"]

_MISSING: Any = object()

#: Numbers up to this are held densely whatever the map's size...
_DENSE_FLOOR = 1 << 16
#: ... and beyond it, up to this many times the number of items.
_DENSE_RATIO = 16

#: Longest uid held as a number (so int() stays cheap and bounded).
_MAX_DIGITS = 18

_PRESENT = re.compile(rb"[^\x00]")

#: Largest dense bytearray read back (a uid of 64 million).
_MAX_DENSE = 1 << 26


def _number(uid: str) -> int:
    """
    The number C{uid} spells (ASCII digits, no leading zero), or -1.
    """
    if uid.isdigit() and uid.isascii() and uid[0] != "0" and len(uid) <= _MAX_DIGITS:
        return int(uid)
    return -1


def _split(text: str, chunk: int = 4096) -> Iterator[List[str]]:
    """
    C{text.split(",")} a slice at a time, so that a long list of uids is
    never held as a string each.
    """
    while text:
        parts = text.split(",", chunk)
        if len(parts) > chunk:
            text = parts.pop()
        else:
            text = ""
        yield parts


class ItemMap(MutableMapping[str, int]):
    """
    uid -> small int (flag bits, 0-254), in little memory when the uids
    are numbers. Iteration gives the numeric uids in ascending order, then
    the others in the order they were added.
    """

    __slots__ = ("_dense", "_denseCount", "_other")

    def __init__(self, items: Iterable[Tuple[str, int]] = ()) -> None:
        # _dense[n] is 0 when uid str(n) is not here, else its value + 1.
        self._dense = bytearray()
        self._denseCount = 0
        self._other: Dict[str, Any] = {}
        for uid, value in items:
            self[uid] = value

    @classmethod
    def fromPacked(cls, packed: Mapping[str, str]) -> "ItemMap":
        """
        The map from its stored form: value (as a string) -> uids,
        comma-separated.
        """
        self = cls()
        total = sum(uids.count(",") + 1 for uids in packed.values() if uids)
        limit = max(_DENSE_FLOOR, _DENSE_RATIO * total)
        for bits, uids in packed.items():
            value = int(bits)
            dense = 0 <= value < 255
            for part in _split(uids):
                for uid in part:
                    n = _number(uid) if dense else -1
                    if 0 <= n <= limit:
                        self._put(n, value)
                    else:
                        self[uid] = value
        return self

    @classmethod
    def fromStored(cls, dense: str, others: Mapping[str, str]) -> "ItemMap":
        """
        The map from L{stored}'s form.

        @raise ValueError: C{dense} is not what L{stored} makes.
        """
        self = cls()
        if dense:
            self._loadDense(dense)
        # The others stay where they were (a numeric uid can be one: too
        # high for the map when it came).
        for bits, uids in others.items():
            value = int(bits)
            for part in _split(uids):
                for uid in part:
                    if uid in self:
                        raise ValueError(f"bad dense items: {uid} stored twice")
                    self._other[uid] = value
        return self

    def _loadDense(self, dense: str) -> None:
        try:
            inflater = zlib.decompressobj()
            raw = inflater.decompress(base64.b64decode(dense.encode("ascii"), validate=True), _MAX_DENSE)
        except (zlib.error, binascii.Error, UnicodeEncodeError) as e:
            raise ValueError(f"bad dense items: {e}") from None
        if inflater.unconsumed_tail or inflater.unused_data or not inflater.eof:
            raise ValueError("bad dense items: too long, cut short or followed by more")
        self._dense = bytearray(raw)
        self._denseCount = len(raw) - raw.count(0)

    def stored(self) -> Tuple[str, Dict[str, str]]:
        """
        The map in a form for JSON: the numeric uids' bytearray,
        compressed and in base64 (a few bytes for a big folder whose flags
        are alike), and the other uids packed as L{fromPacked} reads them.
        """
        dense = base64.b64encode(zlib.compress(self._dense, 1)).decode("ascii") if self._dense else ""
        return dense, self._otherPacked()

    def _otherPacked(self) -> Dict[str, str]:
        """
        The uids kept in the dict, as value (as a string) -> uids,
        comma-separated.
        """
        others: Dict[str, List[str]] = {}
        for uid, value in self._other.items():
            others.setdefault(str(value), []).append(uid)
        return {bits: ",".join(uids) for bits, uids in others.items()}

    def _put(self, n: int, value: int) -> None:
        dense = self._dense
        if n >= len(dense):
            dense.extend(bytes(n + 1 - len(dense)))
        if not dense[n]:
            self._denseCount += 1
        dense[n] = value + 1

    def _fits(self, n: int) -> bool:
        return n < len(self._dense) or n <= max(_DENSE_FLOOR, _DENSE_RATIO * (len(self) + 1))

    # Mapping

    def __len__(self) -> int:
        return self._denseCount + len(self._other)

    def __getitem__(self, uid: str) -> int:
        value = self.get(uid, _MISSING)
        if value is _MISSING:
            raise KeyError(uid)
        return value  # type: ignore[no-any-return]

    def get(self, uid: str, default: Any = None) -> Any:  # type: ignore[override]
        n = _number(uid)
        if 0 <= n < len(self._dense):
            byte = self._dense[n]
            if byte:
                return byte - 1
        if self._other:
            return self._other.get(uid, default)
        return default

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, str) and self.get(uid, _MISSING) is not _MISSING

    def __iter__(self) -> Iterator[str]:
        for match in _PRESENT.finditer(self._dense):
            yield str(match.start())
        yield from list(self._other)

    def items(self) -> Iterator[Tuple[str, int]]:  # type: ignore[override]
        dense = self._dense
        for match in _PRESENT.finditer(dense):
            n = match.start()
            yield str(n), dense[n] - 1
        yield from list(self._other.items())

    def values(self) -> Iterator[int]:  # type: ignore[override]
        for _, value in self.items():
            yield value

    # MutableMapping

    def __setitem__(self, uid: str, value: int) -> None:
        n = _number(uid)
        if n >= 0 and type(value) is int and 0 <= value < 255 and self._fits(n):
            self._other.pop(uid, None)
            self._put(n, value)
            return
        if 0 <= n < len(self._dense) and self._dense[n]:
            self._dense[n] = 0
            self._denseCount -= 1
        self._other[uid] = value

    def __delitem__(self, uid: str) -> None:
        n = _number(uid)
        if 0 <= n < len(self._dense) and self._dense[n]:
            self._dense[n] = 0
            self._denseCount -= 1
            return
        del self._other[uid]

    def pop(self, uid: str, default: Any = _MISSING) -> Any:  # type: ignore[override]
        n = _number(uid)
        if 0 <= n < len(self._dense) and self._dense[n]:
            value = self._dense[n] - 1
            self._dense[n] = 0
            self._denseCount -= 1
            return value
        if default is _MISSING:
            return self._other.pop(uid)
        return self._other.pop(uid, default)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return len(self) == len(other) and all(other.get(uid, _MISSING) == value for uid, value in self.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if len(self) > 20:
            return f"<ItemMap of {len(self)} items>"
        return f"ItemMap({dict(self.items())!r})"
