"""Fakes, each at a boundary no stand-in can reach here; each module says which and why."""
