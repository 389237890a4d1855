"""Readers and validation for user and world data; mixture sampling and packing for pretraining."""
