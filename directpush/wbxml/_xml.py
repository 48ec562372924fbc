# -*- test-case-name: tests.test_wbxml -*-
"""
The XML form libwbxml2 prints and reads: namespaces named after the code
pages with a trailing colon (C{xmlns="AirSync:"}), OPAQUE values as base64.
"""

from __future__ import annotations

import base64
import binascii
import xml.etree.ElementTree as ET
from typing import List, Optional, Tuple

from ._codec import WBXMLError
from ._tokens import BY_LIBWBXML_NAME, BY_NAME, OPAQUE
from ._tree import Element

PROLOGUE = (
    '<?xml version="1.0"?><!DOCTYPE ActiveSync PUBLIC '
    '"-//MICROSOFT//DTD ActiveSync//EN" "http://www.microsoft.com/">'
)


class XMLError(WBXMLError):
    """
    The XML is not an EAS document in libwbxml2's form.
    """


def _escape(text: str) -> str:
    # A raw CR would come back as LF (XML normalises line ends), and mail
    # bodies are full of CR LF: write it as a character reference.
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("\r", "&#13;")


def toXML(root: Element, indent: bool = False, libwbxmlNames: bool = False) -> str:
    """
    Render a tree as libwbxml2 does (C{wbxml2xml -l ACTIVESYNC}): compact
    by default, one element per line with C{indent}. With C{libwbxmlNames}
    the few tags libwbxml2 spells differently from MS-ASWBXML get its
    spelling, so that C{xml2wbxml} reads the output back.
    """
    parts: List[str] = [PROLOGUE]
    nl = "\n" if indent else ""
    if indent:
        parts = [PROLOGUE.replace("><!", ">\n<!"), "\n"]
    # (element, parent namespace, closing?)
    todo: List[Tuple[Element, Optional[str], bool]] = [(root, None, False)]
    while todo:
        el, parentNs, closing = todo.pop()
        name = el.name
        if libwbxmlNames:
            tag = BY_NAME.get((el.ns or "", el.name))
            if tag is not None:
                name = tag.libwbxml
        if closing:
            parts.append(f"</{name}>{nl}")
            continue
        attr = f' xmlns="{el.ns}:"' if el.ns != parentNs else ""
        if el.children:
            parts.append(f"<{name}{attr}>{nl}")
            todo.append((el, parentNs, True))
            todo.extend((c, el.ns, False) for c in reversed(el.children))
        elif el.value is None:
            parts.append(f"<{name}{attr}/>{nl}")
        else:
            if isinstance(el.value, bytes):
                text = base64.b64encode(el.value).decode("ascii")
            else:
                text = _escape(el.value)
            parts.append(f"<{name}{attr}>{text}</{name}>{nl}")
    return "".join(parts)


def fromXML(text: str) -> Element:
    """
    Parse libwbxml2-style XML into a tree. Both MS-ASWBXML and libwbxml2
    spellings of tag names are accepted; the values of byte-array tags
    (see L{OPAQUE}) are read as base64.

    @raise XMLError: for XML that is not well-formed or names unknown tags.
    """
    try:
        top = ET.fromstring(text)
    except ET.ParseError as e:
        raise XMLError(f"not well-formed XML: {e}") from None
    root = _convert(top)
    return root


def _convert(top: ET.Element) -> Element:
    result: Optional[Element] = None
    todo: List[Tuple[ET.Element, Optional[Element]]] = [(top, None)]
    while todo:
        node, parent = todo.pop()
        if not node.tag.startswith("{") or ":}" not in node.tag:
            raise XMLError(f"<{node.tag}> has no EAS namespace such as xmlns=\"AirSync:\"")
        ns, _, name = node.tag[1:].partition(":}")
        tag = BY_NAME.get((ns, name)) or BY_LIBWBXML_NAME.get((ns, name))
        if tag is None:
            raise XMLError(f"no code page has the tag {ns}:{name}")
        el = Element(tag.ns, tag.name)
        children = list(node)
        if children:
            if node.text and node.text.strip():
                raise XMLError(f"{el.qname} mixes text with elements")
        elif node.text is not None:
            if (tag.ns, tag.name) in OPAQUE:
                try:
                    el.value = base64.b64decode("".join(node.text.split()), validate=True)
                except binascii.Error:
                    raise XMLError(f"{el.qname} holds bytes and needs base64") from None
            else:
                el.value = node.text
        if parent is None:
            result = el
        else:
            parent.children.append(el)
        todo.extend((c, el) for c in reversed(children))
    assert result is not None
    return result
