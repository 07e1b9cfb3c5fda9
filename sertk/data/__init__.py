"""Data directories, audio I/O, datasets and batching, label maps, synthetic corpus."""
