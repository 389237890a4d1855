"""Training stages: loop.py holds what they share; each stage file holds its own loop."""
