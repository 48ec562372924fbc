"""
Throughput of the WBXML codec on a realistic ~1 MB EAS Sync response.

What it measures: the wall-clock time of L{directpush.wbxml.encode} and
L{directpush.wbxml.decode} on one Sync response with 512 C{Add} items (Email
fields, an HTML AirSyncBase body, Email2 conversation ids as OPAQUE), best
and median of several runs, and the throughput in MB/s where MB = 10**6
bytes of encoded WBXML (both directions are measured against the encoded
size, so the two rows are comparable).

How to run it (standard library and directpush only):

    python bench/codec.py            # 7 runs each
    python bench/codec.py --quick    # 3 runs each
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import time
from typing import Callable, List

from directpush.wbxml import E, Element, decode, encode

ITEMS = 512
# Aim the whole document at 10**6 bytes; the HTML bodies take up the slack
# left by the fixed per-item fields, so the size stays close to 1 MB even if
# the codec's framing changes.
TARGET_BYTES = 1_000_000
SEED = 20240501

# Words and phrases to vary the HTML; the non-ASCII ones make the UTF-8
# encoder and decoder do real multi-byte work, as mail from real users does.
WORDS = (
    "meeting agenda quarterly report budget review deadline project "
    "customer invoice schedule attached please regards thanks update "
    "Müller café naïve résumé Zürich São Paulo Kraków Ελλάδα Москва "
    "東京 北京 서울 — “quoted” €100 ½ ✓"
).split()
TAGS = ("p", "div", "span", "b", "i", "li", "td")


def cpuName() -> str:
    """
    The processor's name: C{platform.processor()} is empty on many Linux
    systems, so fall back to /proc/cpuinfo and then to the machine type.
    """
    name = platform.processor()
    if name:
        return name
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() or "unknown"


def htmlBody(rng: random.Random, size: int) -> str:
    """
    Varied HTML of exactly C{size} UTF-8 bytes (or one byte less when a
    multi-byte character would straddle the end).
    """
    parts: List[str] = ["<html><body>"]
    used = len(parts[0])
    while used < size:
        tag = rng.choice(TAGS)
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
        chunk = f"<{tag}>{words}</{tag}>\r\n"
        parts.append(chunk)
        used += len(chunk.encode("utf-8"))
    raw = "".join(parts).encode("utf-8")[:size]
    # Cut at a character boundary so the text stays valid.
    return raw.decode("utf-8", "ignore")


def emailItem(rng: random.Random, index: int, bodySize: int) -> Element:
    """
    One Sync C{Add} for an email, as Exchange sends it with a type-2 body.
    """
    body = htmlBody(rng, bodySize)
    sender = rng.choice(("Anna Müller", "Bob Smith", "Chen Wei", "Dana Ólafsdóttir"))
    subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
    day = 1 + index % 28
    return E(
        "Add",
        E("ServerId", f"5:{index + 1}"),
        E(
            "ApplicationData",
            E("Email:To", '"Team" <team@example.com>'),
            E("Email:From", f'"{sender}" <sender{index % 37}@example.org>'),
            E("Email:Subject", subject),
            E("Email:DateReceived", f"2024-05-{day:02d}T09:{index % 60:02d}:00.000Z"),
            E("Email:DisplayTo", "Team"),
            E("Email:ThreadTopic", subject),
            E("Email:Importance", str(rng.randint(0, 2))),
            E("Email:Read", str(rng.randint(0, 1))),
            E("Email:MessageClass", "IPM.Note"),
            E("Email:InternetCPID", "65001"),
            E("Email:ContentClass", "urn:content-classes:message"),
            E("Email:Flag"),
            E(
                "AirSyncBase:Body",
                E("Type", "2"),
                E("EstimatedDataSize", str(len(body.encode("utf-8")))),
                E("Data", body),
            ),
            E("AirSyncBase:NativeBodyType", "2"),
            E("Email2:ConversationId", rng.randbytes(16)),
            E("Email2:ConversationIndex", rng.randbytes(5 + 5 * rng.randint(0, 3))),
        ),
    )


def syncResponse(bodySizes: List[int]) -> Element:
    """
    A Sync response: one Collection whose Commands add one email per size.
    """
    rng = random.Random(SEED)
    adds = [emailItem(rng, i, size) for i, size in enumerate(bodySizes)]
    return E(
        "AirSync:Sync",
        E(
            "Collections",
            E(
                "Collection",
                E("SyncKey", "{6e0b5f3a-2c1d-4b7e-9f10-aa55c3d2e801}2"),
                E("CollectionId", "5"),
                E("Status", "1"),
                E("Commands", *adds),
            ),
        ),
    )


def buildDocument() -> Element:
    """
    Size the bodies so that the encoded document is close to TARGET_BYTES:
    measure the framing with nominal bodies, then spread the difference.
    """
    rng = random.Random(SEED + 1)
    # Bodies vary around ~1.8 KB so items are not all alike.
    sizes = [rng.randint(1500, 2100) for _ in range(ITEMS)]
    first = len(encode(syncResponse(sizes)))
    shift = (TARGET_BYTES - first) // ITEMS
    return syncResponse([max(200, s + shift) for s in sizes])


def countElements(root: Element) -> int:
    count = 0
    stack = [root]
    while stack:
        el = stack.pop()
        count += 1
        stack.extend(el.children)
    return count


def timeRuns(func: Callable[[], object], runs: int) -> List[float]:
    """
    Seconds taken by each of C{runs} calls, after one warm-up call. The
    garbage collector is paused during each call so that a collection
    triggered by earlier allocations does not land in one sample.
    """
    func()
    times = []
    for _ in range(runs):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            func()
            times.append(time.perf_counter() - start)
        finally:
            gc.enable()
    return times


def row(name: str, size: int, elements: int, times: List[float]) -> List[str]:
    best = min(times)
    median = statistics.median(times)
    return [
        name,
        str(size),
        str(elements),
        f"{best * 1e3:.2f}",
        f"{median * 1e3:.2f}",
        f"{size / best / 1e6:.2f}",
        f"{size / median / 1e6:.2f}",
    ]


def printTable(header: List[str], rows: List[List[str]]) -> None:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(cells: List[str]) -> str:
        return " | ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        )

    print(line(header))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 runs instead of 7")
    args = parser.parse_args(argv)
    runs = 3 if args.quick else 7

    tree = buildDocument()
    data = encode(tree)
    # Check correctness once, outside the timed runs.
    assert decode(data) == tree, "decode(encode(tree)) != tree"
    elements = countElements(tree)

    print(f"python {platform.python_implementation()} {sys.version.split()[0]}")
    print(f"machine: {cpuName()} ({platform.machine()}), os.cpu_count()={os.cpu_count()}")
    print(f"document: Sync response, {ITEMS} Add items, {len(data)} bytes WBXML, "
          f"{elements} elements; {runs} runs each (MB = 10^6 bytes)")
    print()
    rows = [
        row("encode", len(data), elements, timeRuns(lambda: encode(tree), runs)),
        row("decode", len(data), elements, timeRuns(lambda: decode(data), runs)),
    ]
    printTable(
        ["operation", "size (bytes)", "elements", "best ms", "median ms",
         "MB/s (best)", "MB/s (median)"],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
