"""seqserve: serve trained PyTorch sequence models exactly, batched, in production."""

__version__ = "0.1.0"
