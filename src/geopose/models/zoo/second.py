"""Placeholder: the second family is being written."""
