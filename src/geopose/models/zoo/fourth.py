"""Placeholder: the fourth family is being written."""
