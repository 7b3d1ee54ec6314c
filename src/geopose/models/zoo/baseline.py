"""Placeholder: the baseline family is being written."""
