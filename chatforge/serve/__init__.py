"""Talking to a trained model: terminal chat, an OpenAI-compatible server, a web page, moderation."""
