"""qassure: certified quantization-error bounds for TFLite int8 models on microcontrollers."""

__version__ = "0.1.0"
