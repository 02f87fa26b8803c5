"""Destinations the collector delivers stored messages to."""
