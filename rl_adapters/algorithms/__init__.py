"""Offline RL algorithms, one module each."""
