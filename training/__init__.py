"""Training and evaluation of linewatch's models (TensorFlow/Keras). Never imported by the edge agent."""
