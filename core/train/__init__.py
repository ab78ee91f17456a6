"""The shared trainer (job `train`): data, the loop, checkpoints and resumable state."""
