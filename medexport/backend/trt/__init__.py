"""TensorRT backend (imported lazily: nothing here imports tensorrt at module load)."""
