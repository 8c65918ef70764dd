"""Built-in attestation backends; importing this package registers them."""

from caltrain.attestation.backends import dcap, simulated, snp

__all__ = ["dcap", "simulated", "snp"]
