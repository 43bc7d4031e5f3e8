"""The sans-I/O realtime session: client events and engine frames in, server events and PCM out."""
