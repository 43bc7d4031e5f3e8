"""The listening side: server VAD (Silero, ONNX) turning the user's input into speech start/stop events.

Sans-I/O like the session core: `VadStream.push(pcm)` takes the same 24 kHz PCM that goes to Moshi and
returns the events it found, on the session's input timeline; the socket shell runs it off the event loop.
"""
