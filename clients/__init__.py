"""OpenAI-style Python SDK for the video chat API. Built in its own issue."""
