"""Placeholder until the owning area lands (see ARCHITECTURE.md)."""
