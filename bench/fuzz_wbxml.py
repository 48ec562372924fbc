"""
Fuzz the WBXML decoder: random, mutated and structured inputs.

What it checks, for every input:

  - L{directpush.wbxml.decode} raises nothing but L{DecodeError};
  - when decode succeeds, C{encode(tree)} raises nothing (NUL in text, the
    one documented EncodeError, cannot come out of decode because STR_I
    ends at NUL) and decodes again to a tree equal to C{tree};
  - for structured random trees, C{decode(encode(tree)) == tree} before
    any mutation.

Inputs are a mix of (a) random bytes, some behind a valid header, (b) valid
EAS documents from a seed corpus, mutated, and (c) random trees built from
the token table, encoded, then usually mutated. Runs are reproducible from
the seed.

How to run it:

    python bench/fuzz_wbxml.py --count 1000000 [--seed N]
        [--seconds 1800]

Progress is printed every 100,000 inputs; up to 20 distinct failures (by
stage, exception type and innermost source line) are printed with their
input in hex, shrunk to a minimal reproducer, and the exit status is 1 if
there were any.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from typing import Callable, Dict, List, Optional, Tuple

from directpush.wbxml import TAGS, DecodeError, E, Element, decode, encode

HEADER = b"\x03\x01\x6a\x00"
SWITCH_PAGE, END, STR_I, OPAQUE = 0x00, 0x01, 0x03, 0xC3
# WBXML global tokens that EAS never uses; the decoder must reject them.
GLOBAL_TOKENS = [0x02, 0x04, 0x40, 0x41, 0x42, 0x43, 0x44,
                 0x80, 0x81, 0x82, 0x83, 0x84, 0xC0, 0xC1, 0xC2, 0xC4]
# Bytes that mean something to the decoder, to favour over uniform noise.
INTERESTING = [0x00, 0x01, 0x03, 0x05, 0x45, 0x7F, 0x80, 0xBF, 0xC3, 0xFF] + GLOBAL_TOKENS
# mb_u_int32 encodings at and past the edges: 2**32-1, 2**32 (too big),
# six bytes (too long), unterminated, and large-but-legal lengths.
HUGE_MBUINTS = [
    b"\x8f\xff\xff\xff\x7f",
    b"\x90\x80\x80\x80\x00",
    b"\xff\xff\xff\xff\xff\x7f",
    b"\x80\x80\x80\x80\x80",
    b"\x81\x80\x80\x00",
    b"\xff\x7f",
    b"\x87\xff\xff\xff\x7f",
    b"\x80\x00",
]
# Byte sequences that are not UTF-8: stray continuation, overlong forms,
# encoded surrogates, past U+10FFFF, and truncated multi-byte characters.
INVALID_UTF8 = [
    b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xed\xa0\x80",
    b"\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff", b"\xfe",
    b"\xe2\x82", b"\xf0\x9f\x98", b"\xc3",
]
TEXT_ALPHABET = (
    "abcXYZ019 <>&\"'\t\r\n"
    "éüßñçø€£½—“”"
    "Ελληνικά Кириллица 中文日本語한국어"
    "😀🎉𝄞\u200b\u0301\ufeff\uffff\U0010ffff"
)
TAG_LIST = sorted(TAGS.values())
PROGRESS_EVERY = 100_000
MAX_FAILURES = 20


# The seed corpus


def seedCorpus() -> List[bytes]:
    """
    Valid documents covering what the decoder must handle: several
    commands, page switches inside one element, OPAQUE, empty values,
    nesting at and past the depth limit, long and multi-byte text.
    """
    docs = [
        E("Ping:Ping", E("Status", "1")),
        E("Ping:Ping", E("HeartbeatInterval", "480"),
          E("Folders", E("Folder", E("Id", "5"), E("Class", "Email")),
            E("Folder", E("Id", "6"), E("Class", "Calendar")))),
        E("FolderHierarchy:FolderSync", E("SyncKey", "0")),
        E("FolderHierarchy:FolderSync", E("Status", "1"), E("SyncKey", "1"),
          E("Changes", E("Count", "2"),
            E("Add", E("ServerId", "1"), E("ParentId", "0"),
              E("DisplayName", "Inbox"), E("Type", "2")),
            E("Add", E("ServerId", "2"), E("ParentId", "0"),
              E("DisplayName", "Entwürfe"), E("Type", "3")))),
        syncWithBody(),
        E("ComposeMail:SendMail", E("ClientId", "abc-123"), E("SaveInSentItems"),
          E("Mime", b"From: a@example.com\r\nTo: b@example.com\r\n"
                    b"Subject: hi\r\n\r\n\x00\x01\xff binary\x80")),
        E("ComposeMail:SendMail", E("ClientId", "x"), E("Mime", b"")),
        E("AirSync:Sync", E("Collections", E("Collection", E("SyncKey", ""),
                                             E("CollectionId", "")))),
        nested(8), nested(63), nested(64), nested(70),
        E("Settings:Settings", E("DeviceInformation", E("Set",
          E("Model", "x" * 5000), E("FriendlyName", "ü" * 2000)))),
        E("Email:Subject", "😀 Grüße 你好 Привет " * 40),
        E("ItemOperations:ItemOperations", E("Response", E("Fetch",
          E("Status", "1"), E("AirSync:ServerId", "1:1"),
          E("Properties", E("AirSyncBase:Body", E("Type", "1"),
                            E("Data", "plain")))))),
        E("Search:Search", E("Store", E("Name", "GAL"), E("Query", "smith"),
          E("Options", E("Range", "0-9")))),
        E("Provision:Provision", E("Policies", E("Policy",
          E("PolicyType", "MS-EAS-Provisioning-WBXML"), E("PolicyKey", "123")))),
        E("GetItemEstimate:GetItemEstimate", E("Collections", E("Collection",
          E("AirSync:SyncKey", "1"), E("CollectionId", "5")))),
    ]
    return [encode(d) for d in docs]


def syncWithBody() -> Element:
    # AirSync -> Email -> AirSyncBase -> Email2 -> back, so that the page
    # state has to survive END tokens in both directions.
    item = E("Add", E("ServerId", "5:1"), E("ApplicationData",
        E("Email:To", "a@example.com"), E("Email:Subject", "Grüße"),
        E("AirSyncBase:Body", E("Type", "2"), E("EstimatedDataSize", "20"),
          E("Data", "<p>héllo wörld</p>")),
        E("Email:Read", "1"),
        E("Email2:ConversationId", bytes(range(16))),
        E("Email:Flag")))
    return E("AirSync:Sync", E("Collections", E("Collection",
        E("SyncKey", "2"), E("CollectionId", "5"), E("Status", "1"),
        E("Commands", item, E("Delete", E("ServerId", "5:2"))))))


def nested(depth: int) -> Element:
    root = leaf = E("AirSync:Sync")
    for _ in range(depth - 1):
        leaf = leaf.add("Collection")
    leaf.value = "bottom"
    return root


# Input generators


# Each generator returns the input and, when it is an unmutated encoding,
# the tree it must decode to (else None).
Generated = Tuple[bytes, Optional[Element]]


def randomBytes(rng: random.Random, corpus: List[bytes]) -> Generated:
    data = rng.randbytes(rng.randint(0, 64))
    # Behind a valid header the noise reaches the body parser.
    if rng.random() < 0.4:
        data = HEADER + data
    return data, None


def mutatedSeed(rng: random.Random, corpus: List[bytes]) -> Generated:
    return mutate(rng, rng.choice(corpus), corpus), None


def structured(rng: random.Random, corpus: List[bytes]) -> Generated:
    tree = randomTree(rng, rng.randint(1, 6))
    data = encode(tree)
    # Some go unmutated, to check decode(encode(tree)) == tree itself.
    if rng.random() < 0.2:
        return data, tree
    return mutate(rng, data, corpus), None


def randomTree(rng: random.Random, depth: int) -> Element:
    tag = rng.choice(TAG_LIST)
    el = Element(tag.ns, tag.name)
    roll = rng.random()
    if depth <= 1 or roll < 0.3:
        el.value = randomValue(rng)
    elif roll < 0.4:
        pass  # an empty element
    else:
        for _ in range(rng.randint(1, 4)):
            el.children.append(randomTree(rng, depth - 1))
    return el


def randomValue(rng: random.Random) -> Optional[object]:
    roll = rng.random()
    if roll < 0.15:
        return None
    if roll < 0.35:
        return rng.randbytes(rng.randint(0, 40))
    return "".join(rng.choice(TEXT_ALPHABET) for _ in range(rng.randint(0, 30)))


# Mutations


def mutate(rng: random.Random, data: bytes, corpus: List[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
        rng.choice(MUTATIONS)(rng, buf, corpus)
    return bytes(buf)


def _pos(rng: random.Random, buf: bytearray, extra: int = 0) -> int:
    return rng.randrange(len(buf) + extra) if len(buf) + extra else 0


def bitFlip(rng, buf, corpus):
    if buf:
        buf[_pos(rng, buf)] ^= 1 << rng.randrange(8)


def replaceByte(rng, buf, corpus):
    if buf:
        buf[_pos(rng, buf)] = rng.choice(INTERESTING) if rng.random() < 0.5 else rng.randrange(256)


def insertBytes(rng, buf, corpus):
    at = _pos(rng, buf, 1)
    buf[at:at] = rng.randbytes(rng.randint(1, 8))


def deleteSlice(rng, buf, corpus):
    if buf:
        at = _pos(rng, buf)
        del buf[at:at + rng.randint(1, 16)]


def truncate(rng, buf, corpus):
    del buf[_pos(rng, buf, 1):]


def duplicateSlice(rng, buf, corpus):
    if buf:
        at = _pos(rng, buf)
        piece = buf[at:at + rng.randint(1, 64)]
        to = _pos(rng, buf, 1)
        buf[to:to] = piece


def splice(rng, buf, corpus):
    # The head of this document with the tail of another: valid-looking
    # structure whose page state and nesting do not match.
    other = rng.choice(corpus)
    buf[_pos(rng, buf, 1):] = other[_pos(rng, bytearray(other), 1):]


def hugeMbuint(rng, buf, corpus):
    # Replace a length field: an OPAQUE length if there is one, else one of
    # the header's public id, charset or string-table length.
    opaques = [i for i, b in enumerate(buf) if b == OPAQUE]
    if opaques and rng.random() < 0.7:
        at = rng.choice(opaques) + 1
    else:
        at = rng.choice((1, 2, 3))
    end = at
    while end < len(buf) and buf[end] & 0x80:
        end += 1
    buf[at:end + 1] = rng.choice(HUGE_MBUINTS)


def switchPage(rng, buf, corpus):
    at = _pos(rng, buf, 1)
    buf[at:at] = bytes((SWITCH_PAGE, rng.randrange(256)))


def globalToken(rng, buf, corpus):
    at = _pos(rng, buf, 1)
    buf[at:at] = bytes((rng.choice(GLOBAL_TOKENS),)) + rng.randbytes(rng.randint(0, 3))


def invalidUtf8(rng, buf, corpus):
    strings = [i for i, b in enumerate(buf) if b == STR_I]
    if not strings:
        return
    start = rng.choice(strings) + 1
    nul = buf.find(0, start)
    end = nul if nul >= 0 else len(buf)
    at = rng.randint(start, end)
    buf[at:at] = rng.choice(INVALID_UTF8)


def toggleContent(rng, buf, corpus):
    # Flip the "has content" bit of a tag-looking byte: elements that are
    # suddenly open, or closed with content still to come.
    tags = [i for i, b in enumerate(buf) if 0x05 <= b & 0x3F and not b & 0x80]
    if tags:
        buf[rng.choice(tags)] ^= 0x40


def endToken(rng, buf, corpus):
    ends = [i for i, b in enumerate(buf) if b == END]
    if ends and rng.random() < 0.5:
        del buf[rng.choice(ends)]
    else:
        at = _pos(rng, buf, 1)
        buf[at:at] = b"\x01"


MUTATIONS = [
    bitFlip, replaceByte, insertBytes, deleteSlice, truncate, duplicateSlice,
    splice, hugeMbuint, switchPage, globalToken, invalidUtf8, toggleContent,
    endToken,
]
GENERATORS: List[Tuple[float, str, Callable[[random.Random, List[bytes]], Generated]]] = [
    (0.20, "random", randomBytes),
    (0.55, "mutated", mutatedSeed),
    (0.25, "structured", structured),
]


# Checking one input


class RoundTripMismatch(Exception):
    """
    A successfully decoded tree did not survive re-encoding unchanged.

    @ivar data: the input that decoded to that tree.
    """

    def __init__(self, message: str, data: bytes) -> None:
        super().__init__(message)
        self.data = data


def check(data: bytes, expected: Optional[Element] = None) -> bool:
    """
    Decode C{data}; return True if it decoded, False on DecodeError; raise
    anything else, including a failed round trip: a tree other than
    C{expected} (when given), or one that re-encodes to something else.
    """
    try:
        tree = decode(data)
    except DecodeError:
        if expected is not None:
            raise
        return False
    if expected is not None and tree != expected:
        raise RoundTripMismatch(f"decode(encode({expected!r})) gave {tree!r}", data)
    again = encode(tree)
    if decode(again) != tree:
        raise RoundTripMismatch(f"decode(encode(decode(x))) != decode(x): {tree!r}", data)
    return True


def failureKey(stage: str, exc: BaseException) -> Tuple[str, str, str, int]:
    """
    Group failures by stage, type and the innermost frame that raised.
    """
    tb = traceback.extract_tb(exc.__traceback__)
    last = tb[-1] if tb else None
    return (stage, type(exc).__name__, last.filename if last else "", last.lineno if last else 0)


def minimize(data: bytes, key: Tuple, deadline: float) -> bytes:
    """
    Greedily drop slices (halving their size) while C{check} still fails
    the same way, so the reported input is small enough to read.
    """
    def same(candidate: bytes) -> bool:
        try:
            check(candidate)
        except Exception as e:
            return failureKey("decode/re-encode", e) == key
        return False

    chunk = max(1, len(data) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        i, shrunk = 0, False
        while i < len(data):
            candidate = data[:i] + data[i + chunk:]
            if same(candidate):
                data, shrunk = candidate, True
            else:
                i += chunk
        if not shrunk:
            chunk //= 2
    return data


def outcome(data: bytes) -> str:
    try:
        return "decoded OK" if check(data) else "DecodeError"
    except Exception as e:
        return repr(e)


# The run


class Stats:
    def __init__(self) -> None:
        self.tried = self.ok = self.decodeErrors = self.other = 0
        self.seconds = 0.0
        self.failures: Dict[Tuple, Tuple[bytes, str, str]] = {}

    def record(self, key: Tuple, data: bytes, exc: BaseException) -> None:
        self.other += 1
        known = self.failures.get(key)
        # Keep the shortest input seen for each distinct failure.
        if known is None and len(self.failures) >= MAX_FAILURES:
            return
        if known is None or len(data) < len(known[0]):
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            self.failures[key] = (data, repr(exc), tb)
            if known is None:
                print(f"FAILURE #{len(self.failures)}: {key[0]}: {exc!r} input={data.hex()}",
                      flush=True)


def pickGenerator(rng: random.Random):
    roll = rng.random()
    for weight, name, gen in GENERATORS:
        if roll < weight:
            return name, gen
        roll -= weight
    return GENERATORS[-1][1], GENERATORS[-1][2]


def run(count: int, seconds: float, seed: int) -> Stats:
    rng = random.Random(seed)
    corpus = seedCorpus()
    stats = Stats()
    start = time.monotonic()
    # The seeds go first, unmutated: a failure there says more than any
    # mutation of them could.
    pending = list(corpus)
    while stats.tried < count:
        if stats.tried % 1000 == 0 and time.monotonic() - start > seconds:
            print(f"stopping: --seconds {seconds:g} reached", flush=True)
            break
        stats.tried += 1
        expected: Optional[Element] = None
        if pending:
            data = pending.pop(0)
        else:
            name, gen = pickGenerator(rng)
            try:
                data, expected = gen(rng, corpus)
            except Exception as e:  # only encode(random tree) can fail here
                stats.record(failureKey(f"{name} generator", e), b"", e)
                continue
        try:
            if check(data, expected):
                stats.ok += 1
            else:
                stats.decodeErrors += 1
        except Exception as e:
            stats.record(failureKey("decode/re-encode", e), data, e)
        if stats.tried % PROGRESS_EVERY == 0:
            elapsed = time.monotonic() - start
            print(f"{stats.tried:>9} inputs  {elapsed:7.1f} s  {stats.tried / elapsed:8.0f}/s  "
                  f"ok={stats.ok} DecodeError={stats.decodeErrors} other={stats.other}",
                  flush=True)
    stats.seconds = time.monotonic() - start
    return stats


def report(stats: Stats) -> None:
    deadline = time.monotonic() + 60
    for n, (key, (data, message, tb)) in enumerate(stats.failures.items(), 1):
        small = minimize(data, key, deadline) if data else data
        print(f"\n=== failure {n}: {key[0]}: {message}")
        print(f"input ({len(data)} bytes): {data.hex()}")
        if small != data:
            print(f"minimized ({len(small)} bytes): {small.hex()} -> {outcome(small)}")
        print(tb, end="")

    header = ["inputs tried", "decoded OK", "DecodeError", "other exceptions",
              "seconds", "inputs/s"]
    cells = [str(stats.tried), str(stats.ok), str(stats.decodeErrors), str(stats.other),
             f"{stats.seconds:.1f}", f"{stats.tried / stats.seconds:.0f}"]
    widths = [max(len(h), len(c)) for h, c in zip(header, cells)]
    print()
    print(" | ".join(h.rjust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    print(" | ".join(c.rjust(w) for c, w in zip(cells, widths)))


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=1800)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    print(f"seed {args.seed}, up to {args.count} inputs or {args.seconds:g} s", flush=True)
    stats = run(args.count, args.seconds, args.seed)
    report(stats)
    return 1 if stats.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
