# -*- test-case-name: tests.test_state -*-
"""
A state store in memory, for tests and as the reference implementation.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from ..interfaces import IStateStore


@implementer(IStateStore)
class MemoryStateStore:
    def __init__(self) -> None:
        self._values: Dict[Tuple[str, str, str], bytes] = {}

    def load(self, user: str, device: str, key: str) -> "Deferred[Optional[bytes]]":
        return succeed(self._values.get((user, device, key)))

    def keys(self, user: str, device: str, prefix: str = "") -> "Deferred[List[str]]":
        return succeed(
            sorted(k for (u, d, k) in self._values if u == user and d == device and k.startswith(prefix))
        )

    def save(self, user: str, device: str, values: Mapping[str, Optional[bytes]]) -> "Deferred[None]":
        # Check every value before changing any: a save is all or nothing.
        staged: Dict[Tuple[str, str, str], Optional[bytes]] = {}
        for key, value in values.items():
            if value is not None and not isinstance(value, (bytes, bytearray, memoryview)):
                return fail(TypeError(f"state value for {key!r} must be bytes"))
            staged[(user, device, key)] = None if value is None else bytes(value)
        before = {name: self._values.get(name) for name in staged}
        try:
            for name, value in staged.items():
                if value is None:
                    self._values.pop(name, None)
                else:
                    self._values[name] = value
        except Exception:
            for name, old in before.items():
                if old is None:
                    self._values.pop(name, None)
                else:
                    self._values[name] = old
            return fail()
        return succeed(None)

    def devices(self, user: str) -> "Deferred[List[str]]":
        return succeed(sorted({d for (u, d, _) in self._values if u == user and d}))
