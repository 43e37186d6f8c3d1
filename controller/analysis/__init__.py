"""Ablations, statistics and reports over finished runs: what a researcher reads to
decide whether one search strategy beats another."""
