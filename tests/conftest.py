import os

# Before anything imports moshi or huggingface_hub: offline, no torch.compile on CPU.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_TORCH_COMPILE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
