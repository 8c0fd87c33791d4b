"""figsearch: semantic search over the figures of PubMed Central."""

__version__ = "0.1.0"
