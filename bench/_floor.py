"""
The floor for bench/push.py: the least a twisted.web server can spend on a
waiting long-poll request.

One leaf Resource whose render_POST reads the body, remembers the request
and returns NOT_DONE_YET, never answering; GET answers the number of
requests waiting (for the bench to check). No authentication, no logging.

    python bench/_floor.py --listen 'tcp:8080:interface=127.0.0.1'
    python bench/_floor.py --listen 'ssl:8443:interface=127.0.0.1:privateKey=key.pem:certKey=cert.pem'

It prints "listening" once the port is open and runs until killed.
"""

from __future__ import annotations

import argparse
import resource
import sys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True, help="a Twisted server endpoint string")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    class Hold(Resource):
        isLeaf = True

        def __init__(self) -> None:
            super().__init__()
            self.pending: set = set()

        def render_POST(self, request):  # type: ignore[no-untyped-def]
            request.content.read()
            self.pending.add(request)
            request.notifyFinish().addBoth(lambda _: self.pending.discard(request))
            return NOT_DONE_YET

        def render_GET(self, request):  # type: ignore[no-untyped-def]
            return str(len(self.pending)).encode()

    def listening(port: object) -> None:
        print("listening", flush=True)

    def failed(f: object) -> None:
        print(f"listen failed: {f}", file=sys.stderr, flush=True)
        reactor.stop()

    serverFromString(reactor, args.listen).listen(Site(Hold())).addCallbacks(listening, failed)
    reactor.run()


if __name__ == "__main__":
    main()
