"""ONNX export of the students, int8 quantisation, parity checks, profiling and serving."""
