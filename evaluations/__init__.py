"""TensorFlow-free evaluation of sample batches: FID, sFID, Inception Score, precision and recall."""
