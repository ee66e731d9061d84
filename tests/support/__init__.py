"""Helpers shared by the test modules: a real server subprocess, polling with a deadline, small models."""
