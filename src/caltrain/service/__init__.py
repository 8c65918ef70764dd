"""Serving layer: the FastAPI host side of the enclave, its client, and participant-side helpers."""
