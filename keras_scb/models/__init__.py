"""SSD-family detector networks (Keras layers only; importable without TensorFlow)."""
