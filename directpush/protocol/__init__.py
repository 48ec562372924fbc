# -*- test-case-name: tests.test_dispatch -*-
"""
The EAS protocol core: no reactor, no twisted.web, no backend. Requests and
documents in, response values out.
"""
