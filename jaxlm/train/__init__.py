"""The trainer: state, optimizer, jitted step, loop, checkpoints, sharding, metrics."""
