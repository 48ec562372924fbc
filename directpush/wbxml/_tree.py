# -*- test-case-name: tests.test_wbxml -*-
"""
The tree that WBXML documents decode to and encode from.

An EAS document never mixes text with child elements and never uses
attributes, so an L{Element} holds either a value (C{str} for STR_I,
C{bytes} for OPAQUE) or children, never both.
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Union

Value = Union[str, bytes, None]


class Element:
    """
    One element: a namespace (the code page's name, such as C{"AirSync"}), a
    tag name, and either a value or children.

    Names given to L{E}, L{find} and friends are qualified C{"Ping:Status"}
    or unqualified C{"Status"}; an unqualified name means "in the same
    namespace as the element it is looked up from or added to", which is how
    EAS documents mostly nest.
    """

    __slots__ = ("ns", "name", "value", "children")

    def __init__(
        self,
        ns: Optional[str],
        name: str,
        value: Value = None,
        children: Optional[List["Element"]] = None,
    ) -> None:
        self.ns = ns
        self.name = name
        self.value = value
        self.children: List[Element] = children if children is not None else []

    # Building

    def append(self, child: "Element") -> "Element":
        """
        Add C{child} as the last child, giving it (and its unqualified
        descendants) this element's namespace; return C{child}.
        """
        if self.value is not None:
            raise ValueError(f"{self.qname} has a value and cannot take children")
        if child.ns is None:
            child._adopt(self.ns)
        self.children.append(child)
        return child

    def add(self, name: str, *content: Union["Element", str, bytes]) -> "Element":
        """
        Create a child from C{name} and C{content} (see L{E}) and append it.
        """
        return self.append(E(name, *content))

    def _adopt(self, ns: Optional[str]) -> None:
        stack = [self]
        while stack:
            el = stack.pop()
            el.ns = ns
            stack.extend(c for c in el.children if c.ns is None)

    # Querying

    @property
    def qname(self) -> str:
        return f"{self.ns}:{self.name}"

    @property
    def text(self) -> Optional[str]:
        """
        The value as text: a STR_I value as is, an OPAQUE value decoded as
        UTF-8 with replacement (clients differ in which they send), or
        L{None} for an element without a value.
        """
        if isinstance(self.value, bytes):
            return self.value.decode("utf-8", "replace")
        return self.value

    def _split(self, name: str) -> tuple[Optional[str], str]:
        ns, sep, local = name.rpartition(":")
        return (ns if sep else self.ns), local

    def iterfind(self, path: str) -> Iterator["Element"]:
        """
        Yield the elements matching C{path}, child names separated by
        C{"/"}, such as C{"Folders/Folder"}.
        """
        level: List[Element] = [self]
        for step in path.split("/"):
            nxt = []
            for parent in level:
                ns, local = parent._split(step)
                nxt.extend(c for c in parent.children if c.name == local and c.ns == ns)
            level = nxt
        return iter(level)

    def findall(self, path: str) -> List["Element"]:
        """
        All elements matching C{path}.
        """
        return list(self.iterfind(path))

    def find(self, path: str) -> Optional["Element"]:
        """
        The first element matching C{path}, or L{None}.
        """
        return next(self.iterfind(path), None)

    def findtext(self, path: str, default: Optional[str] = None) -> Optional[str]:
        """
        The L{text} of the first element matching C{path}, or C{default}
        when there is none or it holds no value.
        """
        el = self.find(path)
        if el is None or el.value is None:
            return default
        return el.text

    # Comparing and showing

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Element):
            return NotImplemented
        # Iterative, so that comparing deep trees never meets the
        # recursion limit.
        pairs = [(self, other)]
        while pairs:
            a, b = pairs.pop()
            if (
                a.ns != b.ns
                or a.name != b.name
                or a.value != b.value
                or len(a.children) != len(b.children)
            ):
                return False
            pairs.extend(zip(a.children, b.children))
        return True

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if self.children:
            return f"E({self.qname!r}, {', '.join(map(repr, self.children))})"
        if self.value is not None:
            return f"E({self.qname!r}, {self.value!r})"
        return f"E({self.qname!r})"


def E(name: str, *content: Union[Element, str, bytes]) -> Element:
    """
    Build an element: C{E("Ping:Ping", E("Status", "1"))}.

    C{content} is either one value (C{str} or C{bytes}) or any number of
    child elements. Unqualified child names take the parent's namespace.
    """
    ns, sep, local = name.rpartition(":")
    el = Element(ns if sep else None, local)
    for item in content:
        if isinstance(item, Element):
            el.append(item)
        elif isinstance(item, (str, bytes)):
            if el.children or el.value is not None:
                raise ValueError(f"{name}: a value must be the only content")
            el.value = item
        else:
            raise TypeError(f"{name}: unexpected content {item!r}")
    return el
