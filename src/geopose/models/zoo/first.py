"""Placeholder: the first family is being written."""
