"""Pytest setup for every test: no network, a CPU thread count that suits small CI machines. The shared
helpers are in tests/helpers.py."""

from __future__ import annotations

import os

import torch

# tests never touch a network, never draw progress bars and keep to the CPU
os.environ.setdefault("WANDB_MODE", "offline")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
