"""clibd: identify insects from photos and DNA barcodes, offline."""

__version__ = "0.1.0"
