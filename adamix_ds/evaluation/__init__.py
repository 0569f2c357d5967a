"""Decoding and scoring for the NLG tasks."""
