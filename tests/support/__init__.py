"""Helpers shared by the unit, root and VM tests."""
