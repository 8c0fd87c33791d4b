"""Contrastive training of BiomedCLIP-style models on the figure store (open_clip)."""
