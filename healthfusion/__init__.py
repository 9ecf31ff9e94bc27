"""healthfusion: multimodal clinical risk models."""
__version__ = "0.1.0"
