# -*- test-case-name: tests.test_wbxml -*-
"""
Tests for L{directpush.wbxml}: exact bytes from the digest's verified
examples, round trips of random trees over every code page, and the one
error type for malformed input.
"""

from __future__ import annotations

import io
import pickle
import sys
from typing import List
from unittest import mock

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from directpush.wbxml import (
    TAGS,
    DecodeError,
    E,
    Element,
    Encoded,
    EncodeError,
    XMLError,
    decode,
    encode,
    fromXML,
    toXML,
)
from directpush.wbxml.__main__ import main

HEADER = b"\x03\x01\x6a\x00"

#: Byte examples verified with libwbxml2 (eas-protocol.md §2.5).
PING_REQUEST = HEADER + (
    b"\x00\x0d\x45\x48\x03480\x00\x01\x49\x4a\x4b\x035\x00\x01"
    b"\x4c\x03Email\x00\x01\x01\x01\x01"
)
PING_RESPONSE = HEADER + b"\x00\x0d\x45\x47\x032\x00\x01\x49\x4a\x035\x00\x01\x01\x01"
SENDMAIL = HEADER + (
    b"\x00\x15\x45\x51\x03msg-1\x00\x01\x08\x50\xc3\x0cSubject: hi\n\x01\x01"
)


def _tags() -> st.SearchStrategy:
    return st.sampled_from(sorted(TAGS.values()))


_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=40,
)


def _trees() -> st.SearchStrategy[Element]:
    leaf = st.builds(
        lambda tag, value: Element(tag.ns, tag.name, value),
        _tags(),
        st.one_of(st.none(), _text, st.binary(max_size=40)),
    )

    def extend(children: st.SearchStrategy[Element]) -> st.SearchStrategy[Element]:
        return st.builds(
            lambda tag, kids: Element(tag.ns, tag.name, None, kids),
            _tags(),
            st.lists(children, min_size=1, max_size=5),
        )

    return st.recursive(leaf, extend, max_leaves=30)


class ExactBytesTests(SynchronousTestCase):
    """
    The encoder writes, and the decoder reads, the digest's verified bytes.
    """

    def test_pingRequest(self) -> None:
        """
        A Ping request switches to page 13 once and nests Folders/Folder.
        """
        tree = E(
            "Ping:Ping",
            E("HeartbeatInterval", "480"),
            E("Folders", E("Folder", E("Id", "5"), E("Class", "Email"))),
        )
        self.assertEqual(encode(tree), PING_REQUEST)
        self.assertEqual(decode(PING_REQUEST), tree)

    def test_pingResponse(self) -> None:
        """
        A Ping response with Status 2 names the changed folder.
        """
        tree = E("Ping:Ping", E("Status", "2"), E("Folders", E("Folder", "5")))
        self.assertEqual(encode(tree), PING_RESPONSE)

    def test_opaque(self) -> None:
        """
        C{bytes} values are OPAQUE with an mb_u_int32 length; empty elements
        have no content bit.
        """
        tree = E(
            "ComposeMail:SendMail",
            E("ClientId", "msg-1"),
            E("SaveInSentItems"),
            E("Mime", b"Subject: hi\n"),
        )
        self.assertEqual(encode(tree), SENDMAIL)
        self.assertEqual(decode(SENDMAIL), tree)

    def test_pageStateAcrossEnd(self) -> None:
        """
        The code page is state, not a stack: after an AirSyncBase Body
        closes, the next Email tag switches back explicitly, and a page-0
        root needs no switch (the MS-ASWBXML sample's pattern).
        """
        tree = E(
            "AirSync:ApplicationData",
            E("AirSyncBase:Body", E("Type", "1")),
            E("Email:Read", "1"),
        )
        self.assertEqual(
            encode(tree),
            HEADER + b"\x5d\x00\x11\x4a\x46\x031\x00\x01\x01\x00\x02\x55\x031\x00\x01\x01",
        )

    def test_longOpaqueLength(self) -> None:
        """
        Lengths of 128 and more take several mb_u_int32 bytes (200 is 81 48).
        """
        data = encode(E("ComposeMail:Mime", b"x" * 200))
        self.assertEqual(data[:9], HEADER + b"\x00\x15\x50\xc3\x81")
        self.assertEqual(data[9], 0x48)
        self.assertEqual(decode(data).value, b"x" * 200)

    def test_emptyString(self) -> None:
        """
        An empty string stays an empty string, distinct from no value.
        """
        self.assertEqual(decode(encode(E("Ping:Status", ""))).value, "")
        self.assertIsNone(decode(encode(E("Ping:Status"))).value)

    def test_stringTable(self) -> None:
        """
        A document carrying a (skipped) string table still decodes.
        """
        doc = b"\x03\x01\x6a\x03abc" + PING_RESPONSE[4:]
        self.assertEqual(decode(doc).findtext("Status"), "2")


class RoundTripTests(SynchronousTestCase):
    """
    decode(encode(tree)) == tree for any tree over any code page.
    """

    @settings(max_examples=500, deadline=None)
    @given(_trees())
    def test_roundTrip(self, tree: Element) -> None:
        """
        Random trees of random tags from all 26 pages, with text, bytes or
        no value, come back equal.
        """
        self.assertEqual(decode(encode(tree)), tree)

    @settings(max_examples=200, deadline=None)
    @given(_trees())
    def test_xmlRoundTrip(self, tree: Element) -> None:
        """
        The XML form carries a tree back to the same WBXML bytes when its
        bytes values sit on byte-array tags, no value is empty, and its text
        has no leading or trailing whitespace or control characters XML
        cannot hold.
        """
        self.assertEqual(encode(fromXML(toXML(_xmlSafe(tree)))), encode(_xmlSafe(tree)))


class EncodedTests(SynchronousTestCase):
    """
    L{Encoded}: an element that carries its tokens, spliced into documents
    as they are, and an ordinary element for everything else.
    """

    @settings(max_examples=300, deadline=None)
    @given(_trees(), _trees(), _trees())
    def test_spliced(self, before: Element, tree: Element, after: Element) -> None:
        """
        A document with an L{Encoded} element anywhere between others of any
        code page decodes to the document with the plain element.
        """
        plain = E("AirSync:Sync", before, tree, after)
        spliced = E("AirSync:Sync", before, Encoded.of(tree), after)
        self.assertEqual(decode(encode(spliced)), plain)

    @settings(max_examples=200, deadline=None)
    @given(_trees())
    def test_pickled(self, tree: Element) -> None:
        """
        An L{Encoded} element pickles as its tokens and unpickles equal to
        the element it was made of.
        """
        encoded = Encoded.of(tree)
        copy = pickle.loads(pickle.dumps(encoded))
        self.assertEqual(copy, tree)
        self.assertEqual(decode(encode(E("AirSync:Sync", copy))), E("AirSync:Sync", tree))

    def test_tokensUsed(self) -> None:
        """
        L{encode} copies the tokens rather than walking the tree: tokens
        that say something else show in the document.
        """
        encoded = Encoded.of(E("AirSync:ApplicationData", E("Email:Subject", "real")))
        assert isinstance(encoded, Encoded)
        other = Encoded.of(E("AirSync:ApplicationData", E("Email:Subject", "from the tokens")))
        assert isinstance(other, Encoded)
        encoded._wbxml = other._wbxml
        self.assertEqual(
            decode(encode(E("AirSync:Sync", encoded))).findtext("ApplicationData/Email:Subject"),
            "from the tokens",
        )

    def test_changedAfterReading(self) -> None:
        """
        Once its children are read, an L{Encoded} element is encoded from
        them, so changes made to it are not lost.
        """
        encoded = Encoded.of(E("AirSync:ApplicationData", E("Email:Subject", "hi")))
        self.assertEqual(encoded.findtext("Email:Subject"), "hi")
        encoded.add("Email:Read", "1")
        back = decode(encode(E("AirSync:Sync", encoded)))
        self.assertEqual(back.findtext("ApplicationData/Email:Read"), "1")
        self.assertEqual(back.findtext("ApplicationData/Email:Subject"), "hi")
        self.assertIs(type(pickle.loads(pickle.dumps(encoded))), Element)

    def test_leaves(self) -> None:
        """
        An element without children is returned as it is: its tokens would
        save nothing.
        """
        for leaf in (E("Email:Subject", "x"), E("AirSync:MoreAvailable")):
            self.assertIs(Encoded.of(leaf), leaf)

    def test_encodeErrors(self) -> None:
        """
        An element that cannot be encoded fails when its tokens are made,
        with L{EncodeError}.
        """
        self.assertRaises(EncodeError, Encoded.of, E("AirSync:ApplicationData", E("Email:Subject", "a\x00b")))


def _xmlSafe(tree: Element) -> Element:
    from directpush.wbxml._tokens import OPAQUE

    out = Element(tree.ns, tree.name, None, [_xmlSafe(c) for c in tree.children])
    value = tree.value
    opaque = (tree.ns, tree.name) in OPAQUE
    if value is not None:
        if opaque:
            # XML has no way to tell an empty value from none.
            out.value = (value if isinstance(value, bytes) else value.encode("utf-8")) or None
        else:
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            text = "".join(c for c in text if c.isalnum() or c in " .-<>&")
            out.value = text.strip() or None
    return out


class TreeTests(SynchronousTestCase):
    """
    Building and querying trees.
    """

    def test_namespaceInheritance(self) -> None:
        """
        Unqualified names take the parent's namespace, qualified ones keep
        theirs, at any depth.
        """
        tree = E("AirSync:Sync", E("Collections", E("Collection", E("AirSyncBase:Body"))))
        self.assertEqual(tree.find("Collections/Collection").ns, "AirSync")
        self.assertEqual(tree.find("Collections/Collection/AirSyncBase:Body").ns, "AirSyncBase")
        self.assertIsNone(tree.find("Collections/Collection/Body"))

    def test_findtext(self) -> None:
        """
        findtext reads STR_I and OPAQUE values alike and falls back to the
        default.
        """
        tree = E("Ping:Ping", E("Status", "2"), E("Folders", E("Folder", b"5")))
        self.assertEqual(tree.findtext("Status"), "2")
        self.assertEqual(tree.findtext("Folders/Folder"), "5")
        self.assertEqual(tree.findtext("HeartbeatInterval", "none"), "none")
        self.assertEqual([f.text for f in tree.findall("Folders/Folder")], ["5"])

    def test_add(self) -> None:
        """
        add() builds children in place.
        """
        tree = E("Ping:Ping")
        folders = tree.add("Folders")
        folders.add("Folder", "1")
        folders.add("Folder", "2")
        self.assertEqual(tree, E("Ping:Ping", E("Folders", E("Folder", "1"), E("Folder", "2"))))

    def test_valueAndChildren(self) -> None:
        """
        An element cannot hold both a value and children.
        """
        self.assertRaises(ValueError, E, "Ping:Ping", "1", E("Status"))
        self.assertRaises(ValueError, E("Ping:Status", "1").append, E("Ping:Status"))


class EncodeErrorTests(SynchronousTestCase):
    """
    Trees that cannot be encoded raise L{EncodeError}.
    """

    def test_unknownTag(self) -> None:
        """
        A tag no page has.
        """
        self.assertRaises(EncodeError, encode, E("Ping:Nope"))
        self.assertRaises(EncodeError, encode, E("Nope:Ping"))

    def test_nul(self) -> None:
        """
        STR_I cannot carry NUL.
        """
        self.assertRaises(EncodeError, encode, E("Ping:Status", "a\x00b"))

    def test_surrogate(self) -> None:
        """
        Text that UTF-8 cannot carry (a lone surrogate).
        """
        self.assertRaises(EncodeError, encode, E("Ping:Status", "\ud800"))

    def test_mixed(self) -> None:
        """
        Value and children together (built behind the builder's back).
        """
        el = E("Ping:Ping", E("Status", "1"))
        el.value = "x"
        self.assertRaises(EncodeError, encode, el)

    def test_deepTree(self) -> None:
        """
        The encoder does not recurse, so a deep tree is no problem.
        """
        tree = leaf = E("AirSync:Sync")
        for _ in range(5000):
            leaf = leaf.add("Collection")
        data = encode(tree)
        self.assertEqual(len(data), 4 + 5001 + 5000)  # 5001 tags, the deepest empty
        self.assertTrue(data.endswith(b"\x01" * 5000))
        self.assertRaises(DecodeError, decode, data)  # past MAX_DEPTH
        self.assertEqual(decode(data, maxDepth=10000), tree)


class DecodeErrorTests(SynchronousTestCase):
    """
    Malformed input raises L{DecodeError} with the offset of the problem.
    """

    def assertDecodeError(self, data: bytes, offset: int, words: str) -> None:
        e = self.assertRaises(DecodeError, decode, data)
        self.assertEqual(e.offset, offset, str(e))
        self.assertIn(words, str(e))

    def test_errors(self) -> None:
        """
        Each kind of damage is named, with its offset.
        """
        cases: List[tuple] = [
            (b"", 0, "empty"),
            (b"\x09\x01\x6a\x00\x45\x01", 0, "version"),
            (b"\x03\x01\x04\x00\x45\x01", 2, "charset"),
            (b"\x03\x01\x6a\x05ab", 3, "string table"),
            (b"\x03\x81\x81\x81\x81\x81\x01", 1, "too long"),
            (b"\x03\x01\x6a", 3, "truncated"),
            (HEADER, 4, "no root"),
            (HEADER + b"\x00", 4, "SWITCH_PAGE"),
            (HEADER + b"\x00\x1a\x45\x01", 4, "code page 26"),
            (HEADER + b"\x01", 4, "END without"),
            (HEADER + b"\x03a\x00", 4, "outside"),
            (HEADER + b"\x45\x03abc", 5, "unterminated"),
            (HEADER + b"\x45\x03\xff\x00\x01", 6, "UTF-8"),
            (HEADER + b"\x45\xc3\x05ab\x01", 5, "opaque"),
            (HEADER + b"\x45\x83\x00\x01", 5, "STR_T"),
            (HEADER + b"\x45\x02\x01", 5, "ENTITY"),
            (HEADER + b"\x85\x01", 4, "attributes"),
            (HEADER + b"\x45\x3f\x01", 5, "unknown tag 0x3f"),
            (HEADER + b"\x45\x4f", 6, "ends inside"),
            (HEADER + b"\x05\x05", 5, "after the root"),
            (HEADER + b"\x45\x01\x05", 6, "after the root"),
            (HEADER + b"\x45\x03a\x00\x4f\x01\x01", 8, "mixed with text"),
            (HEADER + b"\x45\x4f\x01\x03a\x00\x01", 7, "mixed with elements"),
            (HEADER + b"\x45\x03a\x00\xc3\x01b\x01", 8, "mixed with opaque"),
        ]
        for data, offset, words in cases:
            self.assertDecodeError(data, offset, words)

    def test_notBytes(self) -> None:
        """
        Passing text is a programming error, not malformed input.
        """
        self.assertRaises(TypeError, decode, "abc")

    @settings(max_examples=2000, deadline=None)
    @given(st.binary(max_size=64))
    def test_anyBytes(self, data: bytes) -> None:
        """
        Random bytes, with or without a valid header, decode or raise
        DecodeError, nothing else.
        """
        for doc in (data, HEADER + data):
            try:
                decode(doc)
            except DecodeError:
                pass


class XMLTests(SynchronousTestCase):
    """
    The libwbxml2-style XML form.
    """

    def test_form(self) -> None:
        """
        Namespaces carry a trailing colon, appear where the page changes,
        text is escaped and bytes are base64.
        """
        tree = E(
            "AirSync:ApplicationData",
            E("AirSyncBase:Body", E("Data", "a < b & c")),
            E("Email2:ConversationId", b"\x01\x02"),
        )
        self.assertEqual(
            toXML(tree).split(">", 2)[2],
            '<ApplicationData xmlns="AirSync:"><Body xmlns="AirSyncBase:">'
            "<Data>a &lt; b &amp; c</Data></Body>"
            '<ConversationId xmlns="Email2:">AQI=</ConversationId></ApplicationData>',
        )
        self.assertEqual(fromXML(toXML(tree)), tree)

    def test_carriageReturns(self) -> None:
        """
        CR LF in mail text survives the XML form (a raw CR would be read
        back as LF).
        """
        tree = E("AirSyncBase:Data", "a\r\nb\rc")
        self.assertIn("a&#13;\nb&#13;c", toXML(tree))
        self.assertEqual(fromXML(toXML(tree)), tree)

    def test_libwbxmlNames(self) -> None:
        """
        libwbxml2's spellings are written on request and always read.
        """
        tree = E("ComposeMail:SendMail", E("Mime", b"x"))
        self.assertIn("<MIME>eA==</MIME>", toXML(tree, libwbxmlNames=True))
        self.assertEqual(fromXML(toXML(tree, libwbxmlNames=True)), tree)

    def test_indent(self) -> None:
        """
        Indented output parses back to the same tree.
        """
        tree = E("Ping:Ping", E("Status", "2"), E("Folders", E("Folder", "5")))
        self.assertEqual(fromXML(toXML(tree, indent=True)), tree)

    def test_errors(self) -> None:
        """
        Bad XML, unknown tags, missing namespaces and bad base64 are named.
        """
        self.assertRaises(XMLError, fromXML, "<Ping")
        self.assertRaises(XMLError, fromXML, '<Nope xmlns="Ping:"/>')
        self.assertRaises(XMLError, fromXML, "<Ping/>")
        self.assertRaises(XMLError, fromXML, '<MIME xmlns="ComposeMail:">!!</MIME>')
        self.assertRaises(XMLError, fromXML, '<Ping xmlns="Ping:">x<Status/></Ping>')


class CommandLineTests(SynchronousTestCase):
    """
    C{python -m directpush.wbxml decode|encode}.
    """

    def runTool(self, argv: List[str], stdin: bytes) -> tuple:
        out, err = io.BytesIO(), io.StringIO()
        stdout = io.TextIOWrapper(out, encoding="utf-8")
        fakeIn = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
        with mock.patch.object(sys, "stdin", fakeIn), mock.patch.object(
            sys, "stdout", stdout
        ), mock.patch.object(sys, "stderr", err):
            code = main(argv)
            stdout.flush()
        return code, out.getvalue(), err.getvalue()

    def test_decodeEncode(self) -> None:
        """
        decode prints the XML that encode turns back into the same bytes.
        """
        code, xml, _ = self.runTool(["decode"], SENDMAIL)
        self.assertEqual(code, 0)
        self.assertIn(b'<SendMail xmlns="ComposeMail:">', xml)
        code, data, _ = self.runTool(["encode"], xml)
        self.assertEqual((code, data), (0, SENDMAIL))

    def test_error(self) -> None:
        """
        Malformed input gives one line on stderr and exit status 1.
        """
        code, out, err = self.runTool(["decode"], HEADER + b"\x45")
        self.assertEqual((code, out), (1, b""))
        self.assertIn("ends inside an element at byte 5", err)
