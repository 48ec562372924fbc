"""
Mailbox backends: maildir, the IMAP bridge, and memory (tests, reference).
"""
