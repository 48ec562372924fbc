# -*- test-case-name: tests.test_wbxml -*-
"""
WBXML 1.3 as EAS uses it: no attributes, no string table in what we write,
STR_I and OPAQUE leaves, and the code page as encoder/decoder state that
persists across END tokens (MS-ASWBXML 2.1.2).
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from ._tokens import BY_NAME, NAMESPACES, TAGS, Tag
from ._tree import Element

HEADER = b"\x03\x01\x6a\x00"

SWITCH_PAGE = 0x00
END = 0x01
STR_I = 0x03
OPAQUE = 0xC3

# Global tokens WBXML defines and EAS never uses; reject them by name.
_UNSUPPORTED = {
    0x02: "ENTITY",
    0x04: "LITERAL",
    0x40: "EXT_I_0",
    0x41: "EXT_I_1",
    0x42: "EXT_I_2",
    0x43: "PI",
    0x44: "LITERAL_C",
    0x80: "EXT_T_0",
    0x81: "EXT_T_1",
    0x82: "EXT_T_2",
    0x83: "STR_T",
    0x84: "LITERAL_A",
    0xC0: "EXT_0",
    0xC1: "EXT_1",
    0xC2: "EXT_2",
    0xC4: "LITERAL_AC",
}

MAX_DEPTH = 64


class WBXMLError(ValueError):
    """
    Base of the codec's errors.
    """


class DecodeError(WBXMLError):
    """
    The input is not a WBXML document this codec accepts.

    @ivar offset: the byte offset at which the problem was found.
    """

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} at byte {offset}")
        self.reason = message
        self.offset = offset


class EncodeError(WBXMLError):
    """
    A tree cannot be encoded (unknown tag, NUL in text, mixed content).
    """


def _mbuint(data: bytes, pos: int) -> Tuple[int, int]:
    """
    Read a WBXML mb_u_int32 at C{pos}; return (value, next position).
    """
    start = pos
    value = 0
    for _ in range(5):
        if pos >= len(data):
            raise DecodeError("truncated multi-byte integer", start)
        byte = data[pos]
        pos += 1
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            if value > 0xFFFFFFFF:
                break
            return value, pos
    raise DecodeError("multi-byte integer too long", start)


def decode(data: bytes, maxDepth: int = MAX_DEPTH) -> Element:
    """
    Decode one EAS WBXML document.

    @raise DecodeError: for anything malformed, truncated or unknown; never
        any other exception for any input bytes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("decode() takes bytes")
    data = bytes(data)
    if not data:
        raise DecodeError("empty document", 0)
    if data[0] not in (0x01, 0x02, 0x03):
        raise DecodeError(f"unsupported WBXML version 0x{data[0]:02x}", 0)
    publicId, pos = _mbuint(data, 1)
    if publicId == 0:
        # A public id given as a string-table index.
        _, pos = _mbuint(data, pos)
    charsetAt = pos
    charset, pos = _mbuint(data, pos)
    if charset not in (0, 106):
        raise DecodeError(f"unsupported charset {charset} (only UTF-8)", charsetAt)
    tableAt = pos
    tableLength, pos = _mbuint(data, pos)
    if tableLength > len(data) - pos:
        raise DecodeError("string table runs past the end", tableAt)
    pos += tableLength

    end = len(data)
    page = 0
    root: Optional[Element] = None
    # Each stack entry is an element still open (it had the content bit).
    stack: List[Element] = []
    tags = TAGS
    while pos < end:
        at = pos
        byte = data[pos]
        pos += 1
        if byte == SWITCH_PAGE:
            if pos >= end:
                raise DecodeError("truncated SWITCH_PAGE", at)
            page = data[pos]
            pos += 1
            if page not in NAMESPACES:
                raise DecodeError(f"unknown code page {page}", at)
            continue
        if byte == END:
            if not stack:
                raise DecodeError("END without an open element", at)
            stack.pop()
            if not stack:
                break
            continue
        if byte == STR_I or byte == OPAQUE:
            if not stack:
                raise DecodeError("text outside any element", at)
            parent = stack[-1]
            value: str | bytes
            if byte == STR_I:
                nul = data.find(b"\x00", pos)
                if nul < 0:
                    raise DecodeError("unterminated inline string", at)
                try:
                    value = data[pos:nul].decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DecodeError("invalid UTF-8 in inline string", pos + e.start)
                pos = nul + 1
            else:
                length, pos = _mbuint(data, pos)
                if length > end - pos:
                    raise DecodeError("opaque data runs past the end", at)
                value = data[pos : pos + length]
                pos += length
            if parent.children:
                raise DecodeError("text mixed with elements", at)
            old = parent.value
            if old is None:
                parent.value = value
            elif type(old) is type(value):
                parent.value = old + value  # type: ignore[operator]
            else:
                raise DecodeError("inline string mixed with opaque data", at)
            continue
        if byte in _UNSUPPORTED:
            raise DecodeError(f"unsupported WBXML token {_UNSUPPORTED[byte]}", at)
        if byte & 0x80:
            raise DecodeError("attributes are not used by EAS", at)
        tag: Optional[Tag] = tags.get((page, byte & 0x3F))
        if tag is None:
            raise DecodeError(
                f"unknown tag 0x{byte & 0x3F:02x} on code page {page}", at
            )
        el = Element(tag.ns, tag.name)
        if stack:
            parent = stack[-1]
            if parent.value is not None:
                raise DecodeError("element mixed with text", at)
            parent.children.append(el)
        elif root is None:
            root = el
        else:
            raise DecodeError("more than one root element", at)
        if byte & 0x40:
            if len(stack) >= maxDepth:
                raise DecodeError(f"nesting deeper than {maxDepth}", at)
            stack.append(el)
        elif not stack:
            break
    if root is None:
        raise DecodeError("no root element", pos)
    if stack:
        raise DecodeError("document ends inside an element", end)
    if pos != end:
        raise DecodeError("data after the root element", pos)
    return root


def _putMbuint(out: bytearray, value: int) -> None:
    groups = [value & 0x7F]
    value >>= 7
    while value:
        groups.append(0x80 | (value & 0x7F))
        value >>= 7
    out.extend(reversed(groups))


def encode(root: Element) -> bytes:
    """
    Encode a tree as an EAS WBXML document (header C{03 01 6A 00}).

    @raise EncodeError: for a tag no code page has, a NUL in text, or an
        element holding both a value and children.
    """
    out = bytearray(HEADER)
    _encodeInto(out, root, 0)
    return bytes(out)


def _encodeInto(out: bytearray, root: Element, page: int) -> int:
    """
    Append the tokens of C{root} to C{out}, the encoder being on code page
    C{page} (-1: unknown, so the first tag switches page); return the page
    it is on afterwards.
    """
    # An explicit stack, so that tree depth never meets Python's recursion
    # limit; None marks "write END here".
    todo: List[Optional[Element]] = [root]
    byName = BY_NAME
    while todo:
        el = todo.pop()
        if el is None:
            out.append(END)
            continue
        if el.__class__ is Encoded and el._wbxml is not None:  # type: ignore[attr-defined]
            out += el._wbxml  # type: ignore[attr-defined]
            page = el._endPage  # type: ignore[attr-defined]
            continue
        tag = byName.get((el.ns, el.name))  # type: ignore[arg-type]
        if tag is None:
            raise EncodeError(f"no code page has the tag {el.ns}:{el.name}")
        if tag.page != page:
            out.append(SWITCH_PAGE)
            out.append(tag.page)
            page = tag.page
        value = el.value
        children = el.children
        if value is None and not children:
            out.append(tag.token)
            continue
        out.append(tag.token | 0x40)
        if value is not None:
            if children:
                raise EncodeError(f"{el.qname} has both a value and children")
            if isinstance(value, str):
                try:
                    raw = value.encode("utf-8")
                except UnicodeEncodeError:
                    raise EncodeError(f"{el.qname}: text is not valid Unicode") from None
                if b"\x00" in raw:
                    raise EncodeError(f"{el.qname}: text may not contain NUL")
                out.append(STR_I)
                out += raw
                out.append(0)
            elif isinstance(value, (bytes, bytearray)):
                out.append(OPAQUE)
                _putMbuint(out, len(value))
                out += value
            else:
                raise EncodeError(f"{el.qname}: value must be str or bytes")
            out.append(END)
            continue
        todo.append(None)
        todo.extend(reversed(children))
    return page


_CHILDREN = Element.children


class Encoded(Element):
    """
    An element that carries its own WBXML tokens, made where it is built
    (a render worker process) so that it travels as one C{bytes} and
    L{encode} copies it into a document instead of walking it again.

    It is an L{Element} like any other: reading its C{children} decodes
    the tokens once, and from then on it is encoded from its children,
    which may have been changed.
    """

    __slots__ = ("_wbxml", "_endPage")

    def __init__(self, ns: Optional[str], name: str, wbxml: bytes, endPage: int) -> None:
        super().__init__(ns, name)
        self._wbxml: Optional[bytes] = wbxml
        self._endPage = endPage

    @classmethod
    def of(cls, el: Element) -> Element:
        """
        C{el} with its tokens made now; an element without children is
        returned as it is (there is nothing to save).

        @raise EncodeError: as L{encode} would for C{el}.
        """
        if not el.children or el.value is not None or el.ns is None:
            return el
        out = bytearray()
        endPage = _encodeInto(out, el, -1)
        return cls(el.ns, el.name, bytes(out), endPage)

    def _getChildren(self) -> List[Element]:
        if self._wbxml is not None:
            decoded = decode(HEADER + self._wbxml)
            _CHILDREN.__set__(self, decoded.children)
            self._wbxml = None
        return _CHILDREN.__get__(self)  # type: ignore[no-any-return]

    def _setChildren(self, children: List[Element]) -> None:
        self._wbxml = None
        _CHILDREN.__set__(self, children)

    children = property(_getChildren, _setChildren)  # type: ignore[assignment]

    def __reduce__(self) -> Tuple[Any, ...]:
        if self._wbxml is not None:
            return (Encoded, (self.ns, self.name, self._wbxml, self._endPage))
        return (_element, (self.ns, self.name, self.value, self.children))


def _element(ns: Optional[str], name: str, value: Any, children: List[Element]) -> Element:
    return Element(ns, name, value, children)
