"""
Device and sync state stores: SQLite (embedded default), memory (tests).
"""
