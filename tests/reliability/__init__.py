"""Reliability and security tests: load, faults, hostile input, access control."""
