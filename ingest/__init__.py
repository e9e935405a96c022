"""Ingest: SLICE-3D/ISIC sources, the synthetic generator, and the Ray Data embedding pipeline."""
