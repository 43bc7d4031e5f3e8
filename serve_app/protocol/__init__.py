"""OpenAI Realtime wire protocol, both dialects: events, dialect detection, error codes, audio codecs.

Built on the `openai` package's own pydantic types so the wire format cannot drift. No I/O here.
"""
