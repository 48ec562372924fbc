"""
directpush: an Exchange ActiveSync server with Direct Push, on Twisted.
"""

__version__ = "0.1.0.dev0"
