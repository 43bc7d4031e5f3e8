"""Batched streaming Moshi: loading, tiny checkpoints, slots, the clocked tick loop.

Import submodules directly; this package stays free of heavy imports so `engine.port` is cheap.
"""
