# -*- test-case-name: tests.test_mail -*-
"""
Tests for L{directpush.protocol.mail}: RFC 5322 messages as EAS email items.
"""

from __future__ import annotations

import base64
import hashlib
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, List, Optional

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from directpush.protocol.mail import (
    Attachment,
    BodyPreference,
    MailOptions,
    MessageSummary,
    applicationData,
    attachment,
    attachmentParts,
    decodeHeader,
    draftMessage,
    flagElement,
    htmlToText,
    parseFlagChange,
    parseOptions,
    plainText,
    quoteForReply,
    stripBcc,
    summary,
    textToHTML,
    walkParts,
)
from directpush.wbxml import E, Element, decode, encode

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4 + b"\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x01\x02\xff" * 100
DATE = "Mon, 01 Jan 2024 10:00:00 +0000"
DATE_EPOCH = 1704103200.0
RECEIVED = 1704103260.0  # 2024-01-01T10:01:00Z


def message(
    text: Optional[str] = "Hello Bob,\nsee you.\n",
    htmlText: Optional[str] = None,
    subject: str = "Lunch",
    **headers: str,
) -> EmailMessage:
    """
    A realistic message: plain, HTML-only, or multipart/alternative.
    """
    msg = EmailMessage()
    msg["From"] = headers.pop("From", "Alice Example <alice@example.org>")
    msg["To"] = headers.pop("To", "Bob Builder <bob@example.org>")
    msg["Subject"] = subject
    msg["Date"] = headers.pop("Date", DATE)
    msg["Message-ID"] = headers.pop("Message_ID", "<m1@example.org>")
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    if text is not None:
        msg.set_content(text)
        if htmlText is not None:
            msg.add_alternative(htmlText, subtype="html")
    elif htmlText is not None:
        msg.set_content(htmlText, subtype="html")
    return msg


def mixedMessage() -> bytes:
    """
    multipart/mixed[multipart/related[multipart/alternative[plain, html],
    image/png with Content-ID], application/pdf].
    """
    msg = message(
        "Report attached.\n",
        '<html><body><p>Report attached.</p><img src="cid:logo@x"></body></html>',
        subject="Quarterly report",
    )
    html = msg.get_body(("html",))
    assert isinstance(html, EmailMessage)
    html.add_related(
        PNG, maintype="image", subtype="png", cid="<logo@x>", filename="logo.png", disposition="inline"
    )
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="report.pdf")
    return msg.as_bytes()


def signedMessage() -> bytes:
    """
    An S/MIME multipart/signed message as Outlook writes it.
    """
    return (
        b"From: Alice <alice@example.org>\r\n"
        b"To: bob@example.org\r\n"
        b"Subject: Signed\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";\r\n'
        b' micalg=sha-256; boundary="sig"\r\n'
        b"\r\n"
        b"--sig\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n"
        b"\r\n"
        b"Signed text.\r\n"
        b"--sig\r\n"
        b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="smime.p7s"\r\n'
        b"\r\n"
        b"MIIBsignature=\r\n"
        b"--sig--\r\n"
    )


def encryptedMessage() -> bytes:
    return (
        b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: Secret\r\n"
        b'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="smime.p7m"\r\n\r\n'
        + base64.encodebytes(b"\x30\x80ciphertext")
    )


def render(raw: bytes, options: Optional[MailOptions] = None, **kwargs: Any) -> Element:
    """
    L{applicationData} with everyday defaults, checked to encode as WBXML
    (every tag on a real page, no NUL, valid UTF-8) and to decode back to
    the same tree.
    """
    arguments: dict = dict(
        read=False,
        flagged=False,
        answered=False,
        received=RECEIVED,
        options=options if options is not None else MailOptions(),
        fileReferencePrefix="5:7",
    )
    arguments.update(kwargs)
    result = applicationData(raw, **arguments)
    assert decode(encode(result)) == result, result
    return result


def names(element: Element) -> List[str]:
    return [child.qname for child in element.children]


def opaque(data: Element, path: str) -> bytes:
    found = data.find(path)
    assert found is not None and isinstance(found.value, bytes)
    return found.value


def body(data: Element) -> Element:
    found = data.find("AirSyncBase:Body")
    assert found is not None
    return found


def prefs(*preferences: BodyPreference, mimeSupport: int = 0, **kwargs: Any) -> MailOptions:
    return MailOptions(tuple(preferences), mimeSupport, **kwargs)


class ApplicationDataTests(SynchronousTestCase):
    """
    The item properties around the body.
    """

    def test_elementOrder(self) -> None:
        """
        A 14.1 item carries the digest 6.2 elements in Exchange's order,
        Cc and Attachments included when present.
        """
        raw = message(Cc="carol@example.org").as_bytes()
        msg = message_from_bytes(raw, policy=policy.default)
        msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="a.pdf")
        self.assertEqual(
            names(render(msg.as_bytes())),
            [
                "Email:To",
                "Email:Cc",
                "Email:From",
                "Email:Subject",
                "Email:DateReceived",
                "Email:DisplayTo",
                "Email:ThreadTopic",
                "Email:Importance",
                "Email:Read",
                "AirSyncBase:Attachments",
                "AirSyncBase:Body",
                "Email:MessageClass",
                "Email:InternetCPID",
                "Email:Flag",
                "Email:ContentClass",
                "AirSyncBase:NativeBodyType",
                "Email2:ConversationId",
                "Email2:ConversationIndex",
                "Email2:LastVerbExecuted",
            ],
        )

    def test_plainValues(self) -> None:
        """
        The values of a plain message, exactly.
        """
        data = render(message().as_bytes(), read=True)
        self.assertEqual(data.findtext("Email:To"), '"Bob Builder" <bob@example.org>')
        self.assertIsNone(data.find("Email:Cc"))
        self.assertIsNone(data.find("AirSyncBase:Attachments"))
        self.assertEqual(data.findtext("Email:From"), '"Alice Example" <alice@example.org>')
        self.assertEqual(data.findtext("Email:Subject"), "Lunch")
        self.assertEqual(data.findtext("Email:DateReceived"), "2024-01-01T10:01:00.000Z")
        self.assertEqual(data.findtext("Email:DisplayTo"), "Bob Builder")
        self.assertEqual(data.findtext("Email:ThreadTopic"), "Lunch")
        self.assertEqual(data.findtext("Email:Importance"), "1")
        self.assertEqual(data.findtext("Email:Read"), "1")
        self.assertEqual(data.findtext("Email:MessageClass"), "IPM.Note")
        self.assertEqual(data.findtext("Email:InternetCPID"), "65001")
        self.assertEqual(data.find("Email:Flag"), E("Email:Flag"))
        self.assertEqual(data.findtext("Email:ContentClass"), "urn:content-classes:message")
        self.assertEqual(data.findtext("AirSyncBase:NativeBodyType"), "1")
        self.assertEqual(data.findtext("Email2:LastVerbExecuted"), "0")
        self.assertEqual(
            body(data),
            E(
                "AirSyncBase:Body",
                E("Type", "1"),
                E("EstimatedDataSize", "20"),
                E("Data", "Hello Bob,\nsee you.\n"),
            ),
        )

    def test_addresses(self) -> None:
        """
        Several recipients are comma-separated mailboxes with quoted (and
        escaped) display names; DisplayTo lists names, or addresses for
        recipients without one; Cc is formatted the same way.
        """
        raw = message(
            To='"Builder, Bob" <bob@example.org>, carol@example.org, Dan "D" <dan@example.org>',
            Cc="Eve <eve@example.org>",
        ).as_bytes()
        data = render(raw)
        self.assertEqual(
            data.findtext("Email:To"),
            '"Builder, Bob" <bob@example.org>, carol@example.org, "Dan D" <dan@example.org>',
        )
        self.assertEqual(data.findtext("Email:DisplayTo"), "Builder, Bob; carol@example.org; Dan D")
        self.assertEqual(data.findtext("Email:Cc"), '"Eve" <eve@example.org>')

    def test_replyTo(self) -> None:
        """
        Reply-To is carried as Email:ReplyTo, and left out when absent.
        """
        raw = message(**{"Reply-To": "List <list@example.org>"}).as_bytes()
        self.assertEqual(render(raw).findtext("Email:ReplyTo"), '"List" <list@example.org>')
        self.assertIsNone(render(message().as_bytes()).find("Email:ReplyTo"))

    def test_quotesInNamesEscaped(self) -> None:
        """
        A display name holding a double quote stays one quoted string.
        """
        raw = b'From: "Al \\"the pal\\" Ex" <al@example.org>\r\nTo: b@example.org\r\n\r\nx'
        self.assertEqual(render(raw).findtext("Email:From"), '"Al \\"the pal\\" Ex" <al@example.org>')

    def test_encodedWords(self) -> None:
        """
        RFC 2047 subjects and display names are decoded to Unicode,
        including a multi-byte character split over two encoded words and
        the whitespace between encoded words dropped.
        """
        raw = (
            b"From: =?iso-8859-1?q?J=F6rg_M=FCller?= <joerg@example.de>\r\n"
            b"To: =?utf-8?b?5bGx55Sw?= <yamada@example.jp>\r\n"
            b"Subject: AW: =?utf-8?q?Gr=C3?= =?utf-8?q?=BC=C3=9Fe?= aus =?UTF-8?B?S8O2bG4=?=\r\n"
            b"\r\nHallo\r\n"
        )
        data = render(raw)
        self.assertEqual(data.findtext("Email:From"), '"J\u00f6rg M\u00fcller" <joerg@example.de>')
        self.assertEqual(data.findtext("Email:To"), '"\u5c71\u7530" <yamada@example.jp>')
        self.assertEqual(data.findtext("Email:DisplayTo"), "\u5c71\u7530")
        self.assertEqual(data.findtext("Email:Subject"), "AW: Gr\u00fc\u00dfe aus K\u00f6ln")
        self.assertEqual(data.findtext("Email:ThreadTopic"), "Gr\u00fc\u00dfe aus K\u00f6ln")

    def test_raw8BitHeaders(self) -> None:
        """
        Unencoded UTF-8 in headers (RFC 6532) is read as UTF-8, and other
        8-bit header bytes as Windows-1252.
        """
        raw = "Subject: Caf\u00e9 \u2615\r\nFrom: Zo\u00eb <z@example.org>\r\n\r\nx".encode()
        data = render(raw)
        self.assertEqual(data.findtext("Email:Subject"), "Caf\u00e9 \u2615")
        self.assertEqual(data.findtext("Email:From"), '"Zo\u00eb" <z@example.org>')
        latin = "Subject: Caf\u00e9\r\n\r\nx".encode("latin-1")
        self.assertEqual(render(latin).findtext("Email:Subject"), "Caf\u00e9")

    def test_threadTopic(self) -> None:
        """
        ThreadTopic drops any run of reply and forward prefixes in the
        usual languages.
        """
        for subject in [
            "Re: Plans",
            "RE: Fwd: Plans",
            "AW: WG: Plans",
            "Fw:Plans",
            "Re[2]: re: Plans",
            "Plans",
        ]:
            raw = message(subject=subject).as_bytes()
            self.assertEqual(render(raw).findtext("Email:ThreadTopic"), "Plans", subject)

    def test_importance(self) -> None:
        """
        Importance comes from Importance, else X-Priority, else
        X-MSMail-Priority; normal when none says otherwise.
        """
        cases = [
            ({"Importance": "High"}, "2"),
            ({"Importance": "low"}, "0"),
            ({"Importance": "Normal", "X_Priority": "1"}, "1"),
            ({"X_Priority": "1 (Highest)"}, "2"),
            ({"X_Priority": "2"}, "2"),
            ({"X_Priority": "3 (Normal)"}, "1"),
            ({"X_Priority": "5 (Lowest)"}, "0"),
            ({"X_MSMail_Priority": "Low"}, "0"),
            ({}, "1"),
        ]
        for headers, expected in cases:
            raw = message(**headers).as_bytes()
            self.assertEqual(render(raw).findtext("Email:Importance"), expected, headers)

    def test_readAndFlag(self) -> None:
        """
        Read is 0/1; an unflagged message has an empty Flag, a flagged one
        FlagStatus 2 and FlagType "Flag for follow up".
        """
        raw = message().as_bytes()
        self.assertEqual(render(raw, read=False).findtext("Email:Read"), "0")
        self.assertEqual(
            render(raw, flagged=True).find("Email:Flag"),
            E("Email:Flag", E("Status", "2"), E("FlagType", "Flag for follow up")),
        )

    def test_answered(self) -> None:
        """
        An answered message says LastVerbExecuted 1 (reply to sender).
        """
        data = render(message().as_bytes(), answered=True)
        self.assertEqual(data.findtext("Email2:LastVerbExecuted"), "1")

    def test_messageClass(self) -> None:
        """
        multipart/signed S/MIME and application/pkcs7-mime get their S/MIME
        message classes; a PGP-signed message is an ordinary note.
        """
        self.assertEqual(
            render(signedMessage()).findtext("Email:MessageClass"), "IPM.Note.SMIME.MultipartSigned"
        )
        self.assertEqual(render(encryptedMessage()).findtext("Email:MessageClass"), "IPM.Note.SMIME")
        pgp = signedMessage().replace(b'application/pkcs7-signature"', b'application/pgp-signature"')
        self.assertEqual(render(pgp).findtext("Email:MessageClass"), "IPM.Note")

    def test_internetCPID(self) -> None:
        """
        InternetCPID is the Windows code page of the body's charset; an
        unknown charset reports UTF-8, the form the client is sent.
        """
        cases = [
            ("utf-8", "65001"),
            ("us-ascii", "20127"),
            ("iso-8859-1", "28591"),
            ("windows-1252", "1252"),
            ("iso-8859-15", "28605"),
            ("koi8-r", "20866"),
            ("shift_jis", "932"),
            ("iso-2022-jp", "50220"),
            ("gb2312", "936"),
            ("big5", "950"),
            ("x-no-such-charset", "65001"),
        ]
        for charset, expected in cases:
            raw = f"Subject: x\r\nContent-Type: text/plain; charset={charset}\r\n\r\nabc\r\n".encode()
            self.assertEqual(render(raw).findtext("Email:InternetCPID"), expected, charset)

    def test_nativeBodyType(self) -> None:
        """
        NativeBodyType is 2 when the message has HTML, else 1.
        """
        self.assertEqual(
            render(message(None, "<p>x</p>").as_bytes()).findtext("AirSyncBase:NativeBodyType"), "2"
        )
        self.assertEqual(
            render(message("x", "<p>x</p>").as_bytes()).findtext("AirSyncBase:NativeBodyType"), "2"
        )
        self.assertEqual(render(message("x").as_bytes()).findtext("AirSyncBase:NativeBodyType"), "1")

    def test_conversationId(self) -> None:
        """
        ConversationId is 16 bytes naming the thread root: the first
        References entry, else In-Reply-To, else the message's own ID, so
        the root and all replies share it; without IDs the subject decides.
        """
        root = render(message(Message_ID="<root@x>").as_bytes())
        reply = render(
            message(
                subject="Re: Lunch", Message_ID="<r2@x>", In_Reply_To="<r1@x>", References="<root@x> <r1@x>"
            ).as_bytes()
        )
        direct = render(message(subject="Re: Lunch", Message_ID="<r1@x>", In_Reply_To="<root@x>").as_bytes())
        other = render(message(Message_ID="<other@x>").as_bytes())
        rootId = root.findtext("Email2:ConversationId")
        self.assertEqual(opaque(root, "Email2:ConversationId"), hashlib.md5(b"<root@x>").digest())
        self.assertEqual(reply.findtext("Email2:ConversationId"), rootId)
        self.assertEqual(direct.findtext("Email2:ConversationId"), rootId)
        self.assertNotEqual(other.findtext("Email2:ConversationId"), rootId)
        noIds = [
            render(f"Subject: {s}\r\n\r\nx".encode()).find("Email2:ConversationId")
            for s in ("Plans", "Re: plans")
        ]
        self.assertEqual(noIds[0], noIds[1])
        self.assertEqual(len(noIds[0].value), 16)  # type: ignore[union-attr, arg-type]

    def test_conversationIndex(self) -> None:
        """
        ConversationIndex is a 5-byte header from the Date header's time
        (FILETIME bytes 1 to 5), falling back to the received time.
        """
        data = render(message().as_bytes())
        filetime = int((DATE_EPOCH + 11644473600) * 10_000_000)
        self.assertEqual(opaque(data, "Email2:ConversationIndex"), filetime.to_bytes(8, "big")[1:6])
        undated = render(b"Subject: x\r\n\r\nx")
        filetime = int((RECEIVED + 11644473600) * 10_000_000)
        self.assertEqual(opaque(undated, "Email2:ConversationIndex"), filetime.to_bytes(8, "big")[1:6])

    def test_version121(self) -> None:
        """
        12.1 has no Email2 page and no Preview: neither is sent.
        """
        data = render(message().as_bytes(), prefs(BodyPreference(1, None, False, 50), version="12.1"))
        self.assertEqual([n for n in names(data) if n.startswith("Email2:")], [])
        self.assertIsNone(body(data).find("Preview"))

    def test_includeBodyFalse(self) -> None:
        """
        Without the body, the rest (attachments included) is still there.
        """
        data = render(mixedMessage(), includeBody=False)
        self.assertIsNone(data.find("AirSyncBase:Body"))
        self.assertIsNotNone(data.find("AirSyncBase:Attachments"))

    def test_receivedOutOfRange(self) -> None:
        """
        An absurd received time does not break the item.
        """
        data = render(message().as_bytes(), received=1e300)
        self.assertEqual(data.findtext("Email:DateReceived"), "1970-01-01T00:00:00.000Z")


class BodyTests(SynchronousTestCase):
    """
    Choosing, converting and truncating the body.
    """

    def test_defaultIsWholePlainText(self) -> None:
        """
        Without a BodyPreference (12.1 default) the body is the whole plain
        text, converted from HTML when that is all there is.
        """
        raw = message(None, "<html><body><p>Hello<br>World</p><script>x</script></body></html>").as_bytes()
        self.assertEqual(
            body(render(raw)),
            E("AirSyncBase:Body", E("Type", "1"), E("EstimatedDataSize", "11"), E("Data", "Hello\nWorld")),
        )

    def test_htmlPreferred(self) -> None:
        """
        The client's order decides: HTML first gets the HTML alternative,
        plain first the plain one.
        """
        raw = message("plain words\n", "<p>rich words</p>\n").as_bytes()
        data = body(render(raw, prefs(BodyPreference(2), BodyPreference(1))))
        self.assertEqual(data.findtext("Type"), "2")
        self.assertEqual(data.findtext("Data"), "<p>rich words</p>\n")
        data = body(render(raw, prefs(BodyPreference(1), BodyPreference(2))))
        self.assertEqual(data.findtext("Type"), "1")
        self.assertEqual(data.findtext("Data"), "plain words\n")

    def test_plainAsHTMLIsEscaped(self) -> None:
        """
        A plain-only message asked for as HTML is escaped text in an HTML
        document, so "<script>" is shown, not run.
        """
        raw = message("Try <script>alert(1)</script> & see\n").as_bytes()
        data = body(render(raw, prefs(BodyPreference(2))))
        self.assertEqual(data.findtext("Type"), "2")
        markup = data.findtext("Data") or ""
        self.assertNotIn("<script>", markup)
        self.assertIn("Try &lt;script&gt;alert(1)&lt;/script&gt; &amp; see\n", markup)
        self.assertTrue(markup.startswith("<html>"))
        self.assertEqual(data.findtext("EstimatedDataSize"), str(len(markup.encode())))

    def test_truncationOnCharacterBoundary(self) -> None:
        """
        Data is cut to TruncationSize bytes without splitting a UTF-8
        character; EstimatedDataSize is the full size; Truncated is 1.
        """
        raw = message("\u00e9\u00e9\u00e9\u20ac\u20ac").as_bytes()  # 6 + 6 bytes (+ newline)
        data = body(render(raw, prefs(BodyPreference(1, 5))))
        self.assertEqual(
            data,
            E(
                "AirSyncBase:Body",
                E("Type", "1"),
                E("EstimatedDataSize", "13"),
                E("Truncated", "1"),
                E("Data", "\u00e9\u00e9"),
            ),
        )
        data = body(render(raw, prefs(BodyPreference(1, 8))))
        self.assertEqual(data.findtext("Data"), "\u00e9\u00e9\u00e9")
        data = body(render(raw, prefs(BodyPreference(1, 13))))
        self.assertIsNone(data.find("Truncated"))
        self.assertEqual(data.findtext("Data"), "\u00e9\u00e9\u00e9\u20ac\u20ac\n")

    def test_allOrNoneFallsThrough(self) -> None:
        """
        AllOrNone with a body over TruncationSize skips to the next
        preference.
        """
        raw = message("short plain\n", "<p>" + "long html " * 50 + "</p>").as_bytes()
        data = body(render(raw, prefs(BodyPreference(2, 100, True), BodyPreference(1, 1000))))
        self.assertEqual(data.findtext("Type"), "1")
        self.assertEqual(data.findtext("Data"), "short plain\n")
        # Without AllOrNone the same preference is taken, truncated.
        data = body(render(raw, prefs(BodyPreference(2, 100, False), BodyPreference(1, 1000))))
        self.assertEqual(data.findtext("Type"), "2")
        self.assertEqual(data.findtext("Truncated"), "1")

    def test_nothingFits(self) -> None:
        """
        When no preference is acceptable, plain text is sent, cut to the
        smallest size the client mentioned.
        """
        raw = message("x" * 500).as_bytes()
        data = body(render(raw, prefs(BodyPreference(2, 100, True), BodyPreference(1, 50, True))))
        self.assertEqual(data.findtext("Type"), "1")
        self.assertEqual(data.findtext("Data"), "x" * 50)
        self.assertEqual(data.findtext("Truncated"), "1")

    def test_rtfSkipped(self) -> None:
        """
        RTF is not offered: the next preference is used, or plain text.
        """
        raw = message("text\n", "<b>text</b>").as_bytes()
        self.assertEqual(body(render(raw, prefs(BodyPreference(3), BodyPreference(2)))).findtext("Type"), "2")
        self.assertEqual(body(render(raw, prefs(BodyPreference(3)))).findtext("Type"), "1")

    def test_preview(self) -> None:
        """
        Preview holds the first N characters of the plain text with
        whitespace collapsed, only when asked for, at most 255.
        """
        raw = message(None, "<p>Hello</p>\n<p>big   wide\tworld</p>" + "z" * 400).as_bytes()
        data = body(render(raw, prefs(BodyPreference(2, 10, False, 15))))
        self.assertEqual(data.findtext("Preview"), "Hello big wide ")
        self.assertEqual(
            names(data),
            [
                "AirSyncBase:Type",
                "AirSyncBase:EstimatedDataSize",
                "AirSyncBase:Truncated",
                "AirSyncBase:Data",
                "AirSyncBase:Preview",
            ],
        )
        self.assertIsNone(body(render(raw, prefs(BodyPreference(2)))).find("Preview"))
        long = body(render(raw, prefs(BodyPreference(1, None, False, 255))))
        self.assertEqual(len(long.findtext("Preview") or ""), 255)

    def test_mimeNeedsMIMESupport(self) -> None:
        """
        Type 4 is only sent with MIMESupport 2 (or 1 for S/MIME): the whole
        message as text.
        """
        raw = message("text\n").as_bytes()
        self.assertEqual(body(render(raw, prefs(BodyPreference(4), mimeSupport=0))).findtext("Type"), "1")
        self.assertEqual(body(render(raw, prefs(BodyPreference(4), mimeSupport=1))).findtext("Type"), "1")
        data = body(render(raw, prefs(BodyPreference(4), mimeSupport=2)))
        self.assertEqual(data.findtext("Type"), "4")
        self.assertEqual(data.findtext("Data"), raw.decode())
        self.assertEqual(data.findtext("EstimatedDataSize"), str(len(raw)))

    def test_mimeForSMIME(self) -> None:
        """
        With MIMESupport 1, S/MIME messages go as MIME even when the client
        listed another type first; other messages do not.
        """
        options = prefs(BodyPreference(2), BodyPreference(4), mimeSupport=1)
        data = body(render(signedMessage(), options))
        self.assertEqual(data.findtext("Type"), "4")
        self.assertEqual(data.findtext("Data"), signedMessage().decode())
        self.assertEqual(body(render(message().as_bytes(), options)).findtext("Type"), "2")
        self.assertEqual(
            body(render(encryptedMessage(), prefs(BodyPreference(1), mimeSupport=1))).findtext("Type"), "4"
        )

    def test_smimeWithoutMIME(self) -> None:
        """
        Without MIMESupport a signed message shows its signed text, and the
        signature is an attachment.
        """
        data = render(signedMessage())
        self.assertEqual(body(data).findtext("Data"), "Signed text.")
        self.assertEqual(data.findtext("AirSyncBase:Attachments/Attachment/DisplayName"), "smime.p7s")

    def test_mimeTruncation(self) -> None:
        """
        MIMETruncation limits MIME data (code 1 = 4096), and the smaller of
        it and TruncationSize wins.
        """
        raw = message("y" * 6000).as_bytes()
        data = body(render(raw, prefs(BodyPreference(4), mimeSupport=2, mimeTruncation=4096)))
        self.assertEqual(len(data.findtext("Data") or ""), 4096)
        self.assertEqual(data.findtext("Truncated"), "1")
        data = body(render(raw, prefs(BodyPreference(4, 100), mimeSupport=2, mimeTruncation=4096)))
        self.assertEqual(len(data.findtext("Data") or ""), 100)

    def test_charsets(self) -> None:
        """
        Bodies in ISO-8859-1 (quoted-printable), Shift_JIS (base64) and
        8-bit Windows-1252 are decoded; broken and unknown charsets decode
        with replacement or as UTF-8 when the bytes are UTF-8.
        """
        cases = [
            (
                b"Content-Type: text/plain; charset=iso-8859-1\r\n"
                b"Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=FC=DFe",
                "Gr\u00fc\u00dfe",
            ),
            (
                b"Content-Type: text/plain; charset=Shift_JIS\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                + base64.b64encode("\u65e5\u672c\u8a9e\u306e\u30e1\u30fc\u30eb".encode("shift_jis")),
                "\u65e5\u672c\u8a9e\u306e\u30e1\u30fc\u30eb",
            ),
            (
                b"Content-Type: text/plain; charset=windows-1252\r\n\r\n\x93quoted\x94 \x80",
                "\u201cquoted\u201d \u20ac",
            ),
            (b"Content-Type: text/plain; charset=x-bogus\r\n\r\n" + "na\u00efve".encode(), "na\u00efve"),
            (b"Content-Type: text/plain; charset=utf-8\r\n\r\nna\xefve", "na\ufffdve"),
            (b"Content-Type: text/plain; charset=base64\r\n\r\nplain", "plain"),
            (b"Content-Type: text/plain\r\n\r\n" + "8-bit \u00e9".encode(), "8-bit \u00e9"),
        ]
        for raw, expected in cases:
            self.assertEqual(body(render(b"Subject: x\r\n" + raw)).findtext("Data"), expected, raw)

    def test_mailingListFooter(self) -> None:
        """
        Unnamed inline text after the first part of a multipart/mixed (a
        list footer) is part of the body, not lost.
        """
        msg = message("Body text.\n")
        msg.make_mixed()
        footer = EmailMessage()
        footer.set_content("-- \nlist footer\n")
        msg.attach(footer)
        data = render(msg.as_bytes())
        self.assertEqual(body(data).findtext("Data"), "Body text.\n\n-- \nlist footer\n")
        self.assertIsNone(data.find("AirSyncBase:Attachments"))


class AttachmentTests(SynchronousTestCase):
    """
    Attachments: listing, FileReferences, fetching.
    """

    def test_mixedWithInlineImage(self) -> None:
        """
        The PDF and the inline image are listed (the image with its
        ContentId and IsInline); the HTML with its image is the body.
        """
        raw = mixedMessage()
        data = render(raw, prefs(BodyPreference(2)))
        indexes = [
            i
            for i, part in enumerate(walkParts(raw))
            if part.get_content_type() in ("image/png", "application/pdf")
        ]
        self.assertEqual(len(indexes), 2)
        self.assertEqual(
            data.find("AirSyncBase:Attachments"),
            E(
                "AirSyncBase:Attachments",
                E(
                    "Attachment",
                    E("DisplayName", "logo.png"),
                    E("FileReference", f"5:7:{indexes[0]}"),
                    E("Method", "1"),
                    E("EstimatedDataSize", str(len(PNG))),
                    E("ContentId", "logo@x"),
                    E("IsInline", "1"),
                ),
                E(
                    "Attachment",
                    E("DisplayName", "report.pdf"),
                    E("FileReference", f"5:7:{indexes[1]}"),
                    E("Method", "1"),
                    E("EstimatedDataSize", str(len(PDF))),
                ),
            ),
        )
        self.assertIn('src="cid:logo@x"', body(data).findtext("Data") or "")

    def test_fileReferenceRoundTrip(self) -> None:
        """
        The index in a FileReference fetches exactly the attachment's bytes;
        an index that is not an attachment fetches nothing.
        """
        raw = mixedMessage()
        for ref in render(raw).findall("AirSyncBase:Attachments/Attachment/FileReference"):
            index = int((ref.text or "").rsplit(":", 1)[1])
            found = attachment(raw, index)
            assert found is not None
            self.assertIn(found.data, (PDF, PNG))
        self.assertIsNone(attachment(raw, 0))
        self.assertIsNone(attachment(raw, 999))
        self.assertIsNone(attachment(b"", 0))

    def test_attachmentParts(self) -> None:
        """
        attachmentParts describes each attachment fully.
        """
        parts = attachmentParts(mixedMessage())
        self.assertEqual(
            [(a.filename, a.contentType, a.contentId, a.inline, a.method) for a in parts],
            [("logo.png", "image/png", "logo@x", True, 1), ("report.pdf", "application/pdf", None, False, 1)],
        )

    def test_embeddedMessage(self) -> None:
        """
        An attached message is one attachment with Method 5 whose data is
        the message; its own parts are not listed.
        """
        inner = mixedMessage()
        outer = message("See below.\n")
        outer.add_attachment(message_from_bytes(inner, policy=policy.default))
        raw = outer.as_bytes()
        data = render(raw)
        items = data.findall("AirSyncBase:Attachments/Attachment")
        self.assertEqual(len(items), 1)
        self.assertEqual(items[0].findtext("Method"), "5")
        self.assertTrue((items[0].findtext("DisplayName") or "").endswith(".eml"))
        (found,) = attachmentParts(raw)
        self.assertEqual(summary(found.data).subject, "Quarterly report")
        self.assertEqual(body(data).findtext("Data"), "See below.\n")

    def test_filenames(self) -> None:
        """
        RFC 2231 and RFC 2047 file names are decoded, paths dropped, and an
        unnamed part is called attachment-N after its index.
        """
        raw = (
            b"Subject: files\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
            b"--b\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename*=UTF-8''na%C3%AFve%20plan.txt\r\n\r\nA\r\n"
            b"--b\r\nContent-Type: application/octet-stream;\r\n"
            b' name="=?utf-8?q?r=C3=A9sum=C3=A9.doc?="\r\n\r\nB\r\n'
            b"--b\r\nContent-Type: application/octet-stream\r\n"
            b'Content-Disposition: attachment; filename="C:\\\\Users\\\\x\\\\secret.xls"\r\n\r\nC\r\n'
            b"--b\r\nContent-Type: application/octet-stream\r\n\r\nD\r\n"
            b"--b--\r\n"
        )
        self.assertEqual(
            [(a.index, a.filename, a.data) for a in attachmentParts(raw)],
            [
                (2, "na\u00efve plan.txt", b"A"),
                (3, "r\u00e9sum\u00e9.doc", b"B"),
                (4, "secret.xls", b"C"),
                (5, "attachment-5", b"D"),
            ],
        )

    def test_encryptedIsAttachment(self) -> None:
        """
        An encrypted S/MIME message has no text body; its smime.p7m is an
        attachment.
        """
        data = render(encryptedMessage())
        self.assertEqual(data.findtext("AirSyncBase:Attachments/Attachment/DisplayName"), "smime.p7m")
        self.assertEqual(body(data).findtext("Data"), "")


class RobustnessTests(SynchronousTestCase):
    """
    Malformed input yields items, never exceptions.
    """

    def test_noHeaders(self) -> None:
        """
        Bytes without any header are a message whose body is those bytes.
        """
        data = render(b"just some words\nand more\n")
        self.assertEqual(data.findtext("Email:Subject"), "")
        self.assertEqual(data.findtext("Email:To"), "")
        self.assertEqual(body(data).findtext("Data"), "just some words\nand more\n")

    def test_empty(self) -> None:
        """
        An empty message is an empty item.
        """
        data = render(b"")
        self.assertEqual(body(data).findtext("Data"), "")
        self.assertEqual(data.findtext("Email:InternetCPID"), "20127")

    def test_truncatedGarbage(self) -> None:
        """
        A message cut off inside a base64 part of a multipart, with NULs and
        invalid bytes in it, still lists its headers and readable text.
        """
        raw = mixedMessage()
        cut = raw[: len(raw) - len(PDF)] + b"\x00\xff\xfe"
        data = render(cut)
        self.assertEqual(data.findtext("Email:Subject"), "Quarterly report")
        self.assertIn("Report attached.", body(data).findtext("Data") or "")

    def test_nulsStripped(self) -> None:
        """
        NUL cannot travel in a WBXML string: it is dropped from text.
        """
        data = render(b"Subject: a\x00b\r\n\r\nc\x00d")
        self.assertEqual(data.findtext("Email:Subject"), "ab")
        self.assertEqual(body(data).findtext("Data"), "cd")

    def test_missingBoundary(self) -> None:
        """
        A multipart without a boundary shows its raw text.
        """
        data = render(b"Content-Type: multipart/mixed\r\n\r\nsome text")
        self.assertEqual(body(data).findtext("Data"), "some text")

    def test_deepNesting(self) -> None:
        """
        Thousands of nested multiparts do not exhaust the stack.
        """
        depth = 3000
        raw = b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
        for n in range(depth):
            raw += b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (n, n + 1)
        raw += b"--b%d\r\nContent-Type: text/plain\r\n\r\ndeep\r\n" % depth
        render(raw)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=2000))
    def test_anyBytes(self, raw: bytes) -> None:
        """
        Arbitrary bytes: every function gives an answer, and the item
        encodes as WBXML.
        """
        render(
            raw,
            prefs(BodyPreference(2, 100, True, 50), BodyPreference(1, 20), BodyPreference(4), mimeSupport=2),
        )
        attachmentParts(raw)
        summary(raw)
        plainText(raw)
        stripBcc(raw)
        quoteForReply(raw, raw, True)

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def test_mutatedMessages(self, data: Any) -> None:
        """
        Real messages with bytes changed, removed or inserted anywhere still
        render as valid items.
        """
        raw = bytearray(
            data.draw(st.sampled_from([mixedMessage(), signedMessage(), encryptedMessage(), MESSAGE_HEADERS]))
        )
        for _ in range(data.draw(st.integers(1, 8))):
            position = data.draw(st.integers(0, len(raw)))
            action = data.draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
            chunk = data.draw(
                st.sampled_from(
                    [b"\x00", b"\xff", b"=?", b"?=", b"--", b"\r\n\r\n", b";", b'"', b"<", b"=\r\n"]
                )
            )
            if action == "flip" and position < len(raw):
                raw[position] ^= data.draw(st.integers(1, 255))
            elif action == "cut":
                del raw[position : position + data.draw(st.integers(1, 40))]
            elif action == "insert":
                raw[position:position] = chunk
            else:
                del raw[position:]
        render(bytes(raw), prefs(BodyPreference(2, 500, False, 30), BodyPreference(4), mimeSupport=1))
        for found in attachmentParts(bytes(raw)):
            self.assertIsInstance(found, Attachment)
        quoteForReply(bytes(raw), message().as_bytes(), True)


MESSAGE_HEADERS = (
    b'From: =?utf-8?q?A=C3=A9?= <a@x>\r\nTo: "B, C" <b@x>, undisclosed-recipients:;\r\n'
    b"Subject: =?x-unknown?b?////?= =?utf-8?b?broken\r\nDate: Thu, 31 Feb 2024 99:99:99 +9999\r\n"
    b'References: <a@x>\r\nContent-Type: text/html; charset="utf-8\r\n\r\n<p>hi'
)


class HTMLTests(SynchronousTestCase):
    """
    L{htmlToText} and L{textToHTML}.
    """

    def test_readable(self) -> None:
        """
        Paragraphs and line breaks become line breaks; script is dropped.
        """
        self.assertEqual(htmlToText("<p>Hello<br>World</p><script>x</script>"), "Hello\nWorld")

    def test_structure(self) -> None:
        """
        Headings and paragraphs get blank lines, list items and table rows
        lines; entities are decoded; source whitespace collapses except in
        pre.
        """
        markup = (
            "<html><head><title>T</title><style>p {color: red}</style></head><body>"
            "<h1>Title &amp; more</h1><p>one\n   two</p><ul><li>a</li><li>b</li></ul>"
            "<table><tr><td>x</td><td>y</td></tr><tr><td>z</td></tr></table>"
            "<pre>  keep\n    this</pre><div>caf&eacute;&nbsp;&#8364;</div></body></html>"
        )
        self.assertEqual(
            htmlToText(markup),
            "Title & more\n\none two\n\n- a\n- b\n\nx y\nz\n\n  keep\n    this\n\ncaf\u00e9 \u20ac",
        )

    def test_unclosedHead(self) -> None:
        """
        A missing </head> does not swallow the body.
        """
        self.assertEqual(htmlToText("<head><title>t</title><body>visible"), "visible")

    def test_textToHTML(self) -> None:
        """
        Text becomes escaped HTML that keeps its line breaks.
        """
        markup = textToHTML("a <script>\nb & c")
        self.assertIn("a &lt;script&gt;\nb &amp; c", markup)
        self.assertIn("white-space: pre-wrap", markup)
        self.assertNotIn("<script>", markup)

    def test_decodeHeader(self) -> None:
        """
        decodeHeader keeps text between encoded words and malformed words.
        """
        self.assertEqual(decodeHeader("a =?utf-8?q?b?= c"), "a b c")
        self.assertEqual(decodeHeader("=?utf-8?q?broken"), "=?utf-8?q?broken")
        self.assertEqual(decodeHeader("=?bogus?q?x?="), "x")
        self.assertEqual(decodeHeader(None), "")


class OptionsTests(SynchronousTestCase):
    """
    L{parseOptions} and L{parseFlagChange}.
    """

    def test_parseOptions(self) -> None:
        """
        BodyPreferences keep their order; MIMESupport and MIMETruncation
        (mapped to characters) are read; Preview is capped at 255.
        """
        options = E(
            "AirSync:Options",
            E("FilterType", "3"),
            E(
                "AirSyncBase:BodyPreference",
                E("Type", "2"),
                E("TruncationSize", "200000"),
                E("AllOrNone", "1"),
            ),
            E(
                "AirSyncBase:BodyPreference",
                E("Type", "1"),
                E("TruncationSize", "32768"),
                E("Preview", "300"),
            ),
            E("AirSyncBase:BodyPreference", E("Type", "4")),
            E("MIMESupport", "2"),
            E("MIMETruncation", "1"),
        )
        self.assertEqual(
            parseOptions(options, version="14.0"),
            MailOptions(
                (
                    BodyPreference(2, 200000, True, None),
                    BodyPreference(1, 32768, False, 255),
                    BodyPreference(4),
                ),
                2,
                4096,
                "14.0",
            ),
        )

    def test_defaults(self) -> None:
        """
        No Options: no preferences, no MIME, no MIME truncation.
        """
        self.assertEqual(parseOptions(None), MailOptions((), 0, None, "14.1"))

    def test_mimeTruncationCodes(self) -> None:
        """
        MIMETruncation 0..7 map to the digest's sizes; 8 and nonsense mean
        no truncation.
        """
        expected = {
            0: 0,
            1: 4096,
            2: 5120,
            3: 7168,
            4: 10240,
            5: 20480,
            6: 51200,
            7: 102400,
            8: None,
            42: None,
        }
        for code, size in expected.items():
            self.assertEqual(
                parseOptions(E("AirSync:Options", E("MIMETruncation", str(code)))).mimeTruncation, size
            )

    def test_badValuesIgnored(self) -> None:
        """
        Non-numeric values are ignored; a preference without a Type dropped.
        """
        options = E(
            "ItemOperations:Options",
            E("AirSyncBase:BodyPreference", E("Type", "x")),
            E("AirSyncBase:BodyPreference", E("Type", "1"), E("TruncationSize", "lots")),
            E("AirSync:MIMESupport", "7"),
        )
        self.assertEqual(parseOptions(options), MailOptions((BodyPreference(1),), 0))

    def test_flagChanges(self) -> None:
        """
        Read and Flag in a client Change map to booleans; absent ones are
        absent from the result.
        """
        cases = [
            (E("AirSync:ApplicationData", E("Email:Read", "1")), {"read": True}),
            (E("AirSync:ApplicationData", E("Email:Read", "0")), {"read": False}),
            (E("AirSync:ApplicationData", E("Email:Flag")), {"flagged": False}),
            (E("AirSync:ApplicationData", E("Email:Flag", E("Status", "0"))), {"flagged": False}),
            (
                E(
                    "AirSync:ApplicationData",
                    E("Email:Flag", E("Status", "1"), E("CompleteTime", "2024-01-01T00:00:00.000Z")),
                ),
                {"flagged": False},
            ),
            (
                E(
                    "AirSync:ApplicationData",
                    E("Email:Read", "1"),
                    E(
                        "Email:Flag",
                        E("Status", "2"),
                        E("FlagType", "Flag for follow up"),
                        E("Tasks:StartDate", "2024-01-01T00:00:00.000Z"),
                    ),
                ),
                {"read": True, "flagged": True},
            ),
            (E("AirSync:ApplicationData"), {}),
        ]
        for element, expected in cases:
            self.assertEqual(parseFlagChange(decode(encode(element))), expected)


class DraftTests(SynchronousTestCase):
    """
    L{flagElement} and L{draftMessage}.
    """

    def test_flagElement(self) -> None:
        """
        flagElement is what applicationData sends, and parseFlagChange reads
        it back.
        """
        for flagged in (False, True):
            element = flagElement(flagged)
            self.assertEqual(render(message().as_bytes(), flagged=flagged).find("Email:Flag"), element)
            self.assertEqual(parseFlagChange(E("AirSync:ApplicationData", element)), {"flagged": flagged})

    def test_draftMessage(self) -> None:
        """
        A 16.x draft becomes a message with its recipients, subject,
        importance and body, which renders back to the same values.
        """
        data = E(
            "AirSync:ApplicationData",
            E("Email:To", '"Bob" <bob@example.org>'),
            E("Email2:Bcc", "eve@example.org"),
            E("Email:Subject", "Caf\u00e9 plans"),
            E("Email:Importance", "2"),
            E("AirSyncBase:Body", E("Type", "2"), E("Data", "<p>Draft</p>")),
        )
        raw = draftMessage(data)
        item = render(raw)
        self.assertEqual(item.findtext("Email:To"), '"Bob" <bob@example.org>')
        self.assertEqual(item.findtext("Email:Subject"), "Caf\u00e9 plans")
        self.assertEqual(item.findtext("Email:Importance"), "2")
        self.assertEqual(plainText(raw), "Draft")
        self.assertEqual(summary(raw).recipients, ("bob@example.org", "eve@example.org"))

    def test_emptyDraft(self) -> None:
        """
        An empty draft is an empty plain message.
        """
        self.assertEqual(plainText(draftMessage(E("AirSync:ApplicationData"))), "\n")


class SummaryTests(SynchronousTestCase):
    """
    L{summary}, L{plainText} and L{stripBcc}.
    """

    def test_summary(self) -> None:
        """
        The summary has the decoded subject, the sender's address, every
        recipient once, the Message-ID and the Date.
        """
        raw = message(
            subject="Caf\u00e9",
            To="Bob <bob@example.org>, carol@example.org",
            Cc="bob@example.org, dan@example.org",
            Bcc="eve@example.org",
        ).as_bytes()
        self.assertEqual(
            summary(raw),
            MessageSummary(
                "Caf\u00e9",
                "alice@example.org",
                ("bob@example.org", "carol@example.org", "dan@example.org", "eve@example.org"),
                "<m1@example.org>",
                DATE_EPOCH,
            ),
        )

    def test_summaryOfNothing(self) -> None:
        """
        A message without headers has an empty summary.
        """
        self.assertEqual(summary(b"text"), MessageSummary("", "", (), None, None))

    def test_plainText(self) -> None:
        """
        plainText gives HTML-only messages as text.
        """
        self.assertEqual(plainText(message(None, "<p>Find <b>me</b></p>").as_bytes()), "Find me")

    def test_stripBcc(self) -> None:
        """
        Bcc fields and their continuation lines go; every other byte,
        including a "Bcc:" line in the body, stays.
        """
        raw = (
            b"From: a@x\r\nBcc: hidden@x,\r\n\tother@x\r\nTo: b@x\r\nBCC: more@x\r\n"
            b"Subject: s\r\n\r\nBcc: this is body text\r\n"
        )
        self.assertEqual(
            stripBcc(raw), b"From: a@x\r\nTo: b@x\r\nSubject: s\r\n\r\nBcc: this is body text\r\n"
        )
        self.assertEqual(stripBcc(b"To: b@x\nBcc: c@x\n"), b"To: b@x\n")
        noBcc = mixedMessage()
        self.assertEqual(stripBcc(noBcc), noBcc)


class QuoteTests(SynchronousTestCase):
    """
    L{quoteForReply}.
    """

    def reply(self, **kwargs: Any) -> bytes:
        msg = message(
            "Sounds good.\n",
            subject="Re: Lunch",
            From="Bob <bob@example.org>",
            To="alice@example.org",
            **kwargs,
        )
        return msg.as_bytes()

    def test_reply(self) -> None:
        """
        A plain reply gets the original quoted with "> " below the new
        text, and keeps the client's headers.
        """
        original = message("Noon?\nAt the usual place.\n").as_bytes()
        result = message_from_bytes(quoteForReply(original, self.reply(), False), policy=policy.default)
        self.assertEqual(result["Subject"], "Re: Lunch")
        self.assertEqual(result["To"], "alice@example.org")
        text = result.get_body(("plain",)).get_content().replace("\r\n", "\n")  # type: ignore[union-attr]
        self.assertEqual(
            text,
            f'Sounds good.\n\nOn {DATE}, "Alice Example" <alice@example.org> wrote:\n\n'
            "> Noon?\n> At the usual place.\n",
        )

    def test_replyHTML(self) -> None:
        """
        A reply with HTML and plain alternatives quotes into both; the
        original's HTML goes into a blockquote inside the reply's body.
        """
        original = message("orig plain\n", "<html><body><p>orig <b>html</b></p></body></html>").as_bytes()
        reply = message(
            "new plain\n", "<html><body><p>new html</p></body></html>\n", From="bob@example.org"
        ).as_bytes()
        result = message_from_bytes(quoteForReply(original, reply, False), policy=policy.default)
        plain = result.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        markup = result.get_body(("html",)).get_content()  # type: ignore[union-attr]
        self.assertIn("new plain", plain)
        self.assertIn("> orig plain", plain)
        self.assertIn("<p>new html</p>", markup)
        self.assertIn('<blockquote type="cite"', markup)
        self.assertIn("<p>orig <b>html</b></p></blockquote></body></html>", markup)

    def test_forward(self) -> None:
        """
        A forward quotes the original with a header block and carries its
        attachments.
        """
        original = mixedMessage()
        forward = message("FYI\n", subject="Fwd: Quarterly report", To="carol@example.org").as_bytes()
        output = quoteForReply(original, forward, True)
        result = message_from_bytes(output, policy=policy.default)
        self.assertEqual(result.get_content_type(), "multipart/mixed")
        text = result.get_body(("plain",)).get_content().replace("\r\n", "\n")  # type: ignore[union-attr]
        self.assertTrue(text.startswith("FYI\n"))
        self.assertIn(
            '---------- Forwarded message ----------\nFrom: "Alice Example" <alice@example.org>', text
        )
        self.assertIn("Subject: Quarterly report", text)
        self.assertIn("Report attached.", text)
        forwarded = {a.filename: a.data for a in attachmentParts(output)}
        self.assertEqual(forwarded, {"logo.png": PNG, "report.pdf": PDF})

    def test_forwardEmbeddedMessage(self) -> None:
        """
        A forwarded message/rfc822 attachment stays a message.
        """
        original = message("x\n")
        original.add_attachment(
            message_from_bytes(message("inner\n", subject="Inner").as_bytes(), policy=policy.default)
        )
        output = quoteForReply(original.as_bytes(), self.reply(), True)
        (found,) = attachmentParts(output)
        self.assertEqual(found.contentType, "message/rfc822")
        self.assertEqual(summary(found.data).subject, "Inner")

    def test_replyWithoutText(self) -> None:
        """
        A client message with no text part gets one holding the quote.
        """
        reply = (
            b"From: b@x\r\nTo: a@x\r\nSubject: Re\r\nContent-Type: image/png\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\niVBORw==\r\n"
        )
        output = quoteForReply(message("orig\n").as_bytes(), reply, False)
        self.assertIn("> orig", plainText(output))
        self.assertEqual(len(attachmentParts(output)), 1)

    def test_garbageOriginal(self) -> None:
        """
        An unreadable original still yields the client's text.
        """
        output = quoteForReply(b"\xff\x00garbage", self.reply(), False)
        self.assertIn("Sounds good.", plainText(output))
