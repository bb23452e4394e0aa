"""Triton Python-backend adapter of the core (request decoding, batching, BLS, metrics); see issue 5."""
