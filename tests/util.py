"""
Helpers shared by the tests.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

T = TypeVar("T")


def runNow(f: Callable[[], T]) -> "Deferred[T]":
    """
    A runBlocking that runs at once, for tests without threads.
    """
    try:
        return succeed(f())
    except BaseException:
        return fail()


def assertProvides(case: SynchronousTestCase, interface: Any, obj: Any) -> None:
    """
    Fail unless C{obj} (an instance) fully provides C{interface}.
    """
    case.assertTrue(verifyObject(interface, obj))
