"""Contrastive slide-molecule training (THREADS)."""
