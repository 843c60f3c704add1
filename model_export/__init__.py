"""Export of trained model folders to TFLite (int8, float16, float32) bundles the edge agent loads."""
