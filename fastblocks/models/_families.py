"""Imports every family file so its models register. Add a family here (sorted)."""
