"""Command-line realtime client: talk to the server from a WAV file with the official `openai` SDK."""
