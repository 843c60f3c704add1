"""Model definitions (pure Keras or numpy), apart from training loops."""
