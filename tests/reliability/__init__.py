"""Reliability suite: fault injection, process models, outage memory, bad input at scale."""
