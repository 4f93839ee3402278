"""Procedural shape scenes with ground truth, the ``shapes`` model's training, and ShapesBench metrics."""
