"""Tests of ``tracklane.collector`` (a package, so module names never clash with other suites)."""
