"""Integrity marks: fragile query samples whose labels change when the model does."""
