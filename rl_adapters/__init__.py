"""Offline reinforcement learning on top of `bilevel`: data, baselines, VACO, ASPC."""
