"""Conformance suites, one per port (backend, store, queue, events), and the harnesses that build each adapter."""
