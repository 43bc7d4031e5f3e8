"""Input transcription (ASR) of committed user turns: backends (pocketsphinx, faster-whisper, any
OpenAI-compatible API) behind one small interface.

Like the engine, this package knows nothing of Ray or sockets: the ASR deployment (deployments/asr.py)
hosts an `AsrService`, and so does the in-process server of the tests.
"""
