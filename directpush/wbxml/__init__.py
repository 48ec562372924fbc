# -*- test-case-name: tests.test_wbxml -*-
"""
The EAS WBXML codec (MS-ASWBXML): a sans-I/O package using only the
standard library.

    >>> from directpush.wbxml import E, encode, decode
    >>> doc = E("Ping:Ping", E("Status", "1"))
    >>> decode(encode(doc)) == doc
    True
"""

from ._codec import DecodeError, EncodeError, Encoded, WBXMLError, decode, encode
from ._tokens import NAMESPACES, PAGES, TAGS, Tag
from ._tree import E, Element
from ._xml import XMLError, fromXML, toXML

__all__ = [
    "DecodeError",
    "E",
    "Element",
    "EncodeError",
    "Encoded",
    "NAMESPACES",
    "PAGES",
    "TAGS",
    "Tag",
    "WBXMLError",
    "XMLError",
    "decode",
    "encode",
    "fromXML",
    "toXML",
]
