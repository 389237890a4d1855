"""chatforge: train your own ChatGPT end to end, from raw text to a chat model you can talk to."""

__version__ = "0.1.0"
