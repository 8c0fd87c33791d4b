"""PMC ingestion, synthetic corpus, batch embedding, index building and nightly rebuilds."""
