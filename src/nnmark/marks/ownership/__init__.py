"""Ownership marks: query samples that only the owner's model and models derived from it answer as expected."""
