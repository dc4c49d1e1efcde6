"""Data preparation, the two training stages and evaluation. Built in its own issue."""
