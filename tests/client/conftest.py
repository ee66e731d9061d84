"""Fixtures of the client tests: a real server subprocess per module (tests/support/fixtures.py)."""

from tests.support.fixtures import remote, server  # noqa: F401
