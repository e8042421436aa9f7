"""Neural network models in plain PyTorch, one file per model."""
