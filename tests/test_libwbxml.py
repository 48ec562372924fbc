# -*- test-case-name: tests.test_libwbxml -*-
"""
Cross-check the WBXML codec against an independent implementation, the
command-line tools of libwbxml2 (Debian's C{libwbxml2-utils}: C{wbxml2xml}
and C{xml2wbxml}).

For every document checked here:

  - C{xml2wbxml} must produce exactly the bytes L{encode} produces;
  - L{decode} must read C{xml2wbxml}'s bytes back to the same tree;
  - C{wbxml2xml} must read L{encode}'s bytes back to the same tree (and print
    it exactly as L{toXML} does with C{libwbxmlNames=True}).

The documents are the realistic EAS corpus in C{tests/fixtures/wbxml/} and
generated documents that use every tag libwbxml2 0.11.8 knows. The tags it
lacks (L{Tag.inLibwbxml} false) are checked to be unknown to it; their token
values come from the MS-ASWBXML tables alone.

Fixture files are indented for reading. C{xml2wbxml} is run without C{-k},
so it drops whitespace-only text and strips leading and trailing whitespace
from text; fixture values therefore never start or end with whitespace
(inner whitespace, including CR/LF written as character references, is
kept by both sides).

Without the tools the module is skipped, unless the environment variable
C{CI} is set: CI must run this check, so there every test fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Iterator, List, Sequence, Union

from twisted.trial.unittest import SynchronousTestCase

from directpush.wbxml import (
    E,
    Element,
    NAMESPACES,
    TAGS,
    Tag,
    decode,
    encode,
    fromXML,
    toXML,
)

FIXTURES = Path(__file__).parent / "fixtures" / "wbxml"

TOOLS = ("wbxml2xml", "xml2wbxml")
TOOL_TIMEOUT = 30  # seconds, per run; a run normally takes milliseconds

_missingTools = [tool for tool in TOOLS if shutil.which(tool) is None]
_MISSING_MESSAGE = (
    f"{' and '.join(_missingTools)} not on PATH: install libwbxml2-utils "
    "(Debian/Ubuntu) to cross-check the WBXML codec against libwbxml2"
)
if _missingTools and "CI" not in os.environ:
    skip = _MISSING_MESSAGE

# The number of tags libwbxml2 0.11.8 knows, and of those it lacks.
LIBWBXML_TAG_COUNT = 619
MISSING_TAG_COUNT = 25


class ToolError(Exception):
    """
    A libwbxml2 tool exited with a non-zero status.
    """

    def __init__(self, args: Sequence[str], returncode: int, output: str) -> None:
        super().__init__(
            f"{' '.join(args)} exited with status {returncode}: {output.strip()}"
        )
        self.returncode = returncode
        self.output = output


def runTool(args: Sequence[str], timeout: float = TOOL_TIMEOUT) -> str:
    """
    Run one libwbxml2 tool and return what it printed (stdout and stderr;
    the tools report success and failure there, the documents go to files).

    @raise ToolError: when the tool exits with a non-zero status.
    @raise subprocess.TimeoutExpired: when it runs longer than C{timeout}.
    """
    result = subprocess.run(
        list(args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
    )
    output = result.stdout.decode("utf-8", "replace")
    if result.returncode != 0:
        raise ToolError(args, result.returncode, output)
    return output


def libwbxmlEncode(xmlPath: Path, outPath: Path) -> bytes:
    """
    Encode an XML file with C{xml2wbxml}: no public id (header
    C{03 01 6A 00}), no string table.
    """
    runTool(["xml2wbxml", "-a", "-n", "-o", str(outPath), str(xmlPath)])
    return outPath.read_bytes()


def libwbxmlDecode(wbxmlPath: Path, outPath: Path) -> str:
    """
    Decode a WBXML file with C{wbxml2xml} as ActiveSync, compact output.
    """
    runTool(["wbxml2xml", "-l", "ACTIVESYNC", "-m", "0", "-o", str(outPath), str(wbxmlPath)])
    return outPath.read_bytes().decode("utf-8")


def keepCarriageReturns(printed: str) -> str:
    """
    Write the CR characters in C{wbxml2xml}'s output as character
    references. It prints them raw, and an XML parser must turn a raw CR
    LF into LF (XML 1.0 section 2.11), which would lose the CRs that the
    WBXML text holds (and that EAS bodies are full of). In the compact
    output (C{-m 0}) a CR can only come from text.
    """
    return printed.replace("\r", "&#13;")


def libwbxmlTags() -> List[Tag]:
    """
    Every tag libwbxml2 knows, by code page and token.
    """
    return sorted((t for t in TAGS.values() if t.inLibwbxml), key=lambda t: (t.page, t.token))


def missingTags() -> List[Tag]:
    """
    Every tag libwbxml2 lacks, by code page and token.
    """
    return sorted((t for t in TAGS.values() if not t.inLibwbxml), key=lambda t: (t.page, t.token))


def sampleValue(tag: Tag) -> Union[str, bytes]:
    """
    A value for C{tag}: bytes for the tags libwbxml2 writes as OPAQUE
    (including a NUL and bytes that are not UTF-8), otherwise text with
    characters XML must escape and a non-ASCII one.
    """
    if tag.opaque:
        return bytes([tag.page, tag.token, 0x00, 0xFF, 0x80]) + tag.name.encode("ascii")
    return f"{tag.name} {tag.page}.{tag.token:02X} <a&b> \"q\" 'é'"


def leaf(tag: Tag, withValue: bool) -> Element:
    """
    An element for C{tag}: with L{sampleValue} or empty.
    """
    name = f"{tag.ns}:{tag.name}"
    return E(name, sampleValue(tag)) if withValue else E(name)


def interleave(lists: Sequence[Sequence[Tag]]) -> List[Tag]:
    """
    Round-robin over C{lists}, so that consecutive tags come from different
    code pages for as long as possible.
    """
    out: List[Tag] = []
    for i in range(max(len(items) for items in lists)):
        out.extend(items[i] for items in lists if i < len(items))
    return out


def tagsByPage(tags: Sequence[Tag]) -> List[List[Tag]]:
    """
    C{tags} grouped by code page, pages in order.
    """
    pages = sorted({t.page for t in tags})
    return [[t for t in tags if t.page == page] for page in pages]


def pageDocument(page: int) -> Element:
    """
    A document using every tag of code page C{page} that libwbxml2 knows:
    the page's first tag as root, and every tag twice as a child, first
    with a value, then empty.
    """
    tags = [t for t in libwbxmlTags() if t.page == page]
    root = E(f"{tags[0].ns}:{tags[0].name}")
    for tag in tags:
        root.append(leaf(tag, True))
        root.append(leaf(tag, False))
    return root


def flatMixedDocument() -> Element:
    """
    An AirSync root whose children are every tag libwbxml2 knows, taken
    round-robin over the code pages so that nearly every child needs a
    SWITCH_PAGE; children alternate between valued and empty.
    """
    tags = interleave(tagsByPage(libwbxmlTags()))
    return E("AirSync:Sync", *(leaf(t, i % 2 == 0) for i, t in enumerate(tags)))


def nestedMixedDocument(depth: int = 7) -> Element:
    """
    An AirSync root holding chains of C{depth} tags, each nested in the
    previous and each from another code page, the innermost with a value
    or empty: code pages switch on the way in, and the next chain's first
    tag must switch again although several END tokens came between (the
    page is state that END does not restore).
    """
    tags = interleave(tagsByPage(libwbxmlTags()))
    root = E("AirSync:Sync")
    for start in range(0, len(tags), depth):
        chain = tags[start : start + depth]
        inner = leaf(chain[-1], (start // depth) % 2 == 0)
        for tag in reversed(chain[:-1]):
            inner = E(f"{tag.ns}:{tag.name}", inner)
        root.append(inner)
    return root


def missingTagsDocument() -> Element:
    """
    An AirSync root holding every tag libwbxml2 lacks, twice (with a value
    and empty), inside a parent from their own code page where libwbxml2
    knows one (MeetingResponse, Provision) and directly otherwise (Find).
    """
    root = E("AirSync:Sync")
    parents = {8: "MeetingResponse:Request", 14: "Provision:Provision"}
    for tags in tagsByPage(missingTags()):
        children = []
        for tag in tags:
            children.append(leaf(tag, True))
            children.append(leaf(tag, False))
        page = tags[0].page
        if page in parents:
            root.append(E(parents[page], *children))
        else:
            for child in children:
                root.append(child)
    return root


def iterElements(root: Element) -> Iterator[Element]:
    """
    C{root} and its descendants in document order.
    """
    todo = [root]
    while todo:
        el = todo.pop()
        yield el
        todo.extend(reversed(el.children))


def tagOf(el: Element) -> Tag:
    """
    The L{Tag} of an element.
    """
    for tag in TAGS.values():
        if tag.ns == el.ns and tag.name == el.name:
            return tag
    raise KeyError(el.qname)


def firstDifference(a: bytes, b: bytes) -> str:
    """
    Describe where C{a} and C{b} first differ, with hex context.
    """
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    lo = max(0, at - 8)
    return (
        f"lengths {len(a)} and {len(b)}, first difference at byte {at}:\n"
        f"  ours:     ...{a[lo:at + 16].hex(' ')}\n"
        f"  libwbxml: ...{b[lo:at + 16].hex(' ')}"
    )


class LibwbxmlTestCase(SynchronousTestCase):
    """
    Runs documents through libwbxml2's tools in a scratch directory.
    """

    def setUp(self) -> None:
        if _missingTools:
            # Only reached when CI is set (otherwise the module is skipped).
            self.fail(f"CI is set but {_MISSING_MESSAGE}")
        self.scratch = Path(self.mktemp())
        self.scratch.mkdir(parents=True)
        self.runs = 0

    def scratchPath(self, suffix: str) -> Path:
        """
        A fresh file name in this test's scratch directory.
        """
        self.runs += 1
        return self.scratch / f"doc{self.runs}{suffix}"

    def xml2wbxml(self, xml: Union[str, Path]) -> bytes:
        """
        C{xml2wbxml} of an XML file, or of XML text written to one.
        """
        if isinstance(xml, str):
            path = self.scratchPath(".xml")
            path.write_bytes(xml.encode("utf-8"))
            xml = path
        return libwbxmlEncode(xml, self.scratchPath(".wbxml"))

    def wbxml2xml(self, data: bytes) -> str:
        """
        C{wbxml2xml} of WBXML bytes.
        """
        path = self.scratchPath(".wbxml")
        path.write_bytes(data)
        return libwbxmlDecode(path, self.scratchPath(".xml"))

    def assertSameBytes(self, ours: bytes, theirs: bytes, what: str) -> None:
        """
        Fail with the first differing offset when C{ours} is not C{theirs}.
        """
        if ours != theirs:
            self.fail(f"{what}: encode() and xml2wbxml differ, {firstDifference(ours, theirs)}")

    def assertAgreesWithLibwbxml(
        self, tree: Element, xml: Union[str, Path, None] = None, what: str = "document"
    ) -> None:
        """
        The three-way check of the module docstring for C{tree}; C{xml} is
        the XML to give C{xml2wbxml} (default: L{toXML} with libwbxml2's
        names).
        """
        if xml is None:
            xml = toXML(tree, libwbxmlNames=True)
        ours = encode(tree)
        theirs = self.xml2wbxml(xml)
        self.assertSameBytes(ours, theirs, what)
        self.assertEqual(decode(theirs), tree, f"{what}: decode() of xml2wbxml's bytes")
        printed = self.wbxml2xml(ours)
        self.assertEqual(
            fromXML(keepCarriageReturns(printed)), tree, f"{what}: wbxml2xml of encode()'s bytes"
        )
        # libwbxml2 escapes quotes and apostrophes, toXML() does not: compare
        # the canonical forms (C14N 2.0), which leave out such differences.
        self.assertEqual(
            ET.canonicalize(keepCarriageReturns(printed)),
            ET.canonicalize(toXML(tree, libwbxmlNames=True)),
            f"{what}: toXML() and wbxml2xml print different XML",
        )


class FixtureTests(LibwbxmlTestCase):
    """
    The realistic EAS documents in C{tests/fixtures/wbxml/}; one test per
    fixture is added below.
    """

    def test_corpusPresent(self) -> None:
        """
        The corpus exists, so that the generated per-fixture tests cannot
        silently vanish.
        """
        names = {p.stem for p in FIXTURES.glob("*.xml")}
        for required in (
            "ping-request",
            "ping-response-changes",
            "foldersync-request",
            "foldersync-response",
            "provision-request",
            "provision-response",
            "sync-request",
            "sync-response",
            "itemoperations-fetch-request",
            "itemoperations-fetch-response",
            "sendmail",
            "settings-request",
            "settings-response",
            "moveitems-request",
            "moveitems-response",
            "getitemestimate-request",
            "getitemestimate-response",
            "search-gal-request",
            "search-gal-response",
        ):
            self.assertIn(required, names)

    def checkFixture(self, path: Path) -> None:
        """
        The three-way check for one fixture file, given to C{xml2wbxml} as
        written.
        """
        tree = fromXML(path.read_bytes().decode("utf-8"))
        self.assertAgreesWithLibwbxml(tree, path, path.name)


def camelCase(stem: str) -> str:
    """
    C{"ping-request"} -> C{"pingRequest"}.
    """
    first, *rest = stem.split("-")
    return first + "".join(word[:1].upper() + word[1:] for word in rest)


def fixtureTest(path: Path) -> Callable[[FixtureTests], None]:
    def test(self: FixtureTests) -> None:
        self.checkFixture(path)

    test.__name__ = f"test_{camelCase(path.stem)}"
    test.__doc__ = (
        f"The fixture {path.name}: xml2wbxml and encode() write the same "
        "bytes, and each side's decoder reads the other's bytes back to the "
        "fixture's tree."
    )
    return test


for _path in sorted(FIXTURES.glob("*.xml")):
    _test = fixtureTest(_path)
    setattr(FixtureTests, _test.__name__, _test)
del _path, _test


class EveryTagTests(LibwbxmlTestCase):
    """
    Every tag libwbxml2 knows, in generated documents: one per code page,
    plus two mixing all pages; one test per page is added below.
    """

    def test_coverage(self) -> None:
        """
        The generated documents use every tag libwbxml2 knows (the 619 of
        0.11.8) both with a value and empty, so no token goes unchecked.
        """
        tags = libwbxmlTags()
        self.assertEqual(len(tags), LIBWBXML_TAG_COUNT)
        valued = set()
        empty = set()
        for page in sorted({t.page for t in tags}):
            for el in pageDocument(page).children:
                (valued if el.value is not None else empty).add((el.ns, el.name))
        expected = {(t.ns, t.name) for t in tags}
        self.assertEqual(valued, expected)
        self.assertEqual(empty, expected)

    def test_flatMixedPages(self) -> None:
        """
        An AirSync root whose children switch code page nearly every time:
        libwbxml2 and the codec agree on every SWITCH_PAGE.
        """
        tree = flatMixedDocument()
        self.assertEqual(len(tree.children), LIBWBXML_TAG_COUNT)
        self.assertAgreesWithLibwbxml(tree, what="flat mixed-page document")

    def test_nestedMixedPages(self) -> None:
        """
        Elements nested across code pages: switches inside containers and
        after several ENDs (the code page persists across END) agree with
        libwbxml2.
        """
        self.assertAgreesWithLibwbxml(nestedMixedDocument(), what="nested mixed-page document")

    def checkPage(self, page: int) -> None:
        """
        The three-way check for the document of one code page.
        """
        self.assertAgreesWithLibwbxml(
            pageDocument(page), what=f"code page {page} ({NAMESPACES[page]})"
        )


def pageTest(page: int) -> Callable[[EveryTagTests], None]:
    def test(self: EveryTagTests) -> None:
        self.checkPage(page)

    test.__name__ = f"test_page{page:02d}{NAMESPACES[page]}"
    test.__doc__ = (
        f"Every tag of code page {page} ({NAMESPACES[page]}) that libwbxml2 "
        "knows, with a value and empty: xml2wbxml and encode() write the "
        "same bytes, and each side's decoder reads the other's bytes back."
    )
    return test


for _page in sorted({t.page for t in libwbxmlTags()}):
    _test = pageTest(_page)
    setattr(EveryTagTests, _test.__name__, _test)
del _page, _test


class MissingTagTests(LibwbxmlTestCase):
    """
    The tags libwbxml2 0.11.8 lacks (code page 25 Find, Provision
    AccountOnlyRemoteWipe, MeetingResponse ProposedStartTime and
    ProposedEndTime) cannot be checked against it, which is why their
    tokens are checked against the MS-ASWBXML tables instead. These tests
    document that they are indeed unknown to it.
    """

    def test_count(self) -> None:
        """
        Exactly the 25 tags named in the class docstring are marked as
        missing from libwbxml2.
        """
        tags = missingTags()
        self.assertEqual(len(tags), MISSING_TAG_COUNT)
        self.assertEqual(
            {(t.page, t.token) for t in tags if t.page != 25},
            {(8, 0x10), (8, 0x11), (14, 0x3B)},
        )
        self.assertEqual(
            {t.token for t in tags if t.page == 25},
            {t.token for t in TAGS.values() if t.page == 25},
        )

    def test_wbxml2xmlDoesNotKnowThem(self) -> None:
        """
        C{wbxml2xml} prints each missing tag in our bytes as C{unknown}
        (or gives up on the document), while it names every tag it knows.
        """
        tree = missingTagsDocument()
        try:
            printed = self.wbxml2xml(encode(tree))
        except ToolError:
            return
        theirs = list(ET.fromstring(printed).iter())
        ours = list(iterElements(tree))
        self.assertEqual(len(theirs), len(ours))
        for mine, node in zip(ours, theirs):
            local = node.tag.rpartition("}")[2]
            tag = tagOf(mine)
            self.assertEqual(local, tag.libwbxml if tag.inLibwbxml else "unknown", mine.qname)
            if isinstance(mine.value, str):
                self.assertEqual(node.text, mine.value, mine.qname)

    def test_xml2wbxmlDoesNotKnowThem(self) -> None:
        """
        C{xml2wbxml} never writes a missing tag with its MS-ASWBXML page and
        token: a name no page has is refused (it could only be written as a
        literal, which needs the string table that EAS does without), and
        for the Find names that other pages also have (Query, Status,
        Options, Range, Picture, ...) it ignores the unknown C{Find:}
        namespace and writes that other page's tag.
        """
        refused = []
        for tag in missingTags():
            if tag.page == 8:
                tree = E("MeetingResponse:MeetingResponse", E("Request", leaf(tag, True)))
            elif tag.page == 14:
                tree = E("Provision:Provision", leaf(tag, False))
            else:
                tree = leaf(tag, True)
            try:
                theirs = self.xml2wbxml(toXML(tree, libwbxmlNames=True))
            except ToolError:
                refused.append(tag.name)
                continue
            self.assertNotEqual(theirs, encode(tree), tag)
            self.assertNotIn(b"\x00\x19", theirs[4:6], tag)
        self.assertIn("AccountOnlyRemoteWipe", refused)
        self.assertIn("ProposedStartTime", refused)

    def test_codecRoundTrips(self) -> None:
        """
        The codec itself encodes and decodes the missing tags (and its XML
        form reads them back), with the page and token of L{TAGS}.
        """
        tree = missingTagsDocument()
        data = encode(tree)
        self.assertEqual(decode(data), tree)
        self.assertEqual(fromXML(toXML(tree)), tree)
        self.assertEqual(fromXML(toXML(tree, libwbxmlNames=True)), tree)
        for tag in missingTags():
            single = encode(E(f"{tag.ns}:{tag.name}"))
            prefix = b"" if tag.page == 0 else bytes([0x00, tag.page])
            self.assertEqual(single, b"\x03\x01\x6a\x00" + prefix + bytes([tag.token]))
