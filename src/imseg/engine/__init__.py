"""Training, evaluation, prediction and checkpoints."""
