"""
C{python -m directpush.wbxml decode|encode}: convert captured EAS bodies
between WBXML (binary) and libwbxml2-style XML, stdin to stdout.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import WBXMLError, decode, encode, fromXML, toXML


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m directpush.wbxml",
        description="Convert EAS WBXML to XML (decode) or XML to WBXML (encode), "
        "reading stdin and writing stdout.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    dec = sub.add_parser("decode", help="WBXML on stdin -> XML on stdout")
    dec.add_argument("--indent", action="store_true", help="one element per line")
    dec.add_argument(
        "--libwbxml-names",
        action="store_true",
        help="spell the few tags libwbxml2 names differently its way, "
        "so that xml2wbxml reads the output",
    )
    sub.add_parser("encode", help="XML on stdin -> WBXML on stdout")
    args = parser.parse_args(argv)
    try:
        if args.action == "decode":
            tree = decode(sys.stdin.buffer.read())
            sys.stdout.write(toXML(tree, indent=args.indent, libwbxmlNames=args.libwbxml_names))
            sys.stdout.write("\n")
        else:
            tree = fromXML(sys.stdin.buffer.read().decode("utf-8"))
            sys.stdout.buffer.write(encode(tree))
    except (WBXMLError, UnicodeDecodeError) as e:
        sys.stderr.write(f"python -m directpush.wbxml {args.action}: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
