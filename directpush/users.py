# -*- test-case-name: tests.test_auth -*-
"""
C{python -m directpush.users}: add users, set passwords, remove users in
the users file (DATA/users unless --users says otherwise).
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
from typing import List, Optional

from twisted.python.filepath import FilePath

from . import auth


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m directpush.users",
        description="Manage directpush users. Passwords are stored as "
        "salted, iterated {SCRAM-SHA-256} hashes, which Dovecot reads too.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--data", default="directpush-data", help="data directory (default: %(default)s)")
    where.add_argument("--users", help="users file (default: DATA/users)")
    sub = parser.add_subparsers(dest="action", required=True)
    setp = sub.add_parser("set", help="add a user or set a user's password")
    setp.add_argument("name", help="user name; an e-mail address is recommended")
    how = setp.add_mutually_exclusive_group()
    how.add_argument("--random", action="store_true", help="generate a password and print it")
    how.add_argument("--stdin", action="store_true", help="read the password from the first line of stdin")
    delp = sub.add_parser("delete", help="remove a user")
    delp.add_argument("name")
    sub.add_parser("list", help="list user names")
    args = parser.parse_args(argv)

    path = FilePath(os.path.abspath(args.users or os.path.join(args.data, "users")))
    users = auth.parsePasswd(path.getContent().decode("utf-8")) if path.exists() else {}
    if args.action == "list":
        for name in sorted(users):
            print(name)
        return 0
    if not auth.validUserName(args.name):
        print(f"{parser.prog}: {args.name!r} is not a valid user name "
              "(letters, digits, . _ % + - and an optional @domain)", file=sys.stderr)
        return 2
    if args.action == "delete":
        if args.name not in users:
            print(f"{parser.prog}: no user {args.name}", file=sys.stderr)
            return 1
        del users[args.name]
    else:
        if args.random:
            password = secrets.token_urlsafe(12)
            print(password)
        elif args.stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass(f"Password for {args.name}: ")
            if getpass.getpass("Again: ") != password:
                print(f"{parser.prog}: the passwords differ", file=sys.stderr)
                return 1
        if not password:
            print(f"{parser.prog}: empty password refused", file=sys.stderr)
            return 1
        users[args.name] = auth.hashPassword(password)
    if not path.parent().exists():
        os.makedirs(path.parent().path, mode=0o700)
    auth.writePasswd(path, users)
    return 0


if __name__ == "__main__":
    sys.exit(main())
