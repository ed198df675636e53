"""agpnet: AGPNet (arXiv 2408.07490) and a benchmark suite for industrial visual anomaly detection."""

__version__ = "0.1.0"
