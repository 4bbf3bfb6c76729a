"""Telltale marks: query samples whose labels tell which execution environment answered."""
