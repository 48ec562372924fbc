# -*- test-case-name: tests.test_render -*-
"""
Turning raw messages into EAS ApplicationData is the most expensive thing
the server does (MIME parsing, HTML to text). Command handlers hand it to
a L{Renderer}: in tests, L{renderInline}; in the server, a pool of worker
processes (L{directpush.renderpool}), so that big Syncs use every core and
never stall the reactor, which other devices' requests need.
"""

from __future__ import annotations

from typing import Callable, List, Sequence

import attrs
from twisted.internet.defer import Deferred, fail, succeed

from .. import wbxml
from ..model import Flag, MessageInfo
from . import mail


@attrs.frozen
class RenderJob:
    """
    One message to render; everything a worker process needs, picklable.
    """

    raw: bytes
    read: bool
    flagged: bool
    answered: bool
    received: float
    options: mail.MailOptions
    fileReferencePrefix: str
    includeBody: bool = True


Renderer = Callable[[Sequence[RenderJob]], "Deferred[List[wbxml.Element]]"]


def jobFor(
    raw: bytes, info: MessageInfo, folderId: str, options: mail.MailOptions, includeBody: bool = True
) -> RenderJob:
    """
    The job that renders message C{info} of folder C{folderId}, its flags
    as the listing gives them.
    """
    return RenderJob(
        raw,
        Flag.SEEN in info.flags,
        Flag.FLAGGED in info.flags,
        Flag.ANSWERED in info.flags,
        info.received,
        options,
        f"{folderId}:{info.uid}",
        includeBody,
    )


def renderAll(jobs: Sequence[RenderJob]) -> List[wbxml.Element]:
    """
    Render C{jobs} here and now (what a worker process runs).
    """
    return [
        mail.applicationData(
            job.raw,
            read=job.read,
            flagged=job.flagged,
            answered=job.answered,
            received=job.received,
            options=job.options,
            fileReferencePrefix=job.fileReferencePrefix,
            includeBody=job.includeBody,
        )
        for job in jobs
    ]


def renderEncoded(jobs: Sequence[RenderJob]) -> List[wbxml.Element]:
    """
    L{renderAll}, each result carrying its WBXML tokens (what a worker
    process runs): a tree crosses the process boundary as one C{bytes}
    instead of thousands of pickled objects, and the server copies it
    into the answer rather than encoding it again.
    """
    return [wbxml.Encoded.of(element) for element in renderAll(jobs)]


def ready() -> bool:
    """
    Nothing: a worker process that ran it has imported this module.
    """
    return True


def renderInline(jobs: Sequence[RenderJob]) -> "Deferred[List[wbxml.Element]]":
    """
    A L{Renderer} that works on the calling thread.
    """
    try:
        return succeed(renderAll(jobs))
    except Exception:
        return fail()
