"""Evaluation of trained runs: task exact match, reward-model scores."""
