"""Built-in attestation backends; importing this package registers them."""

from caltrain.attestation.backends import simulated

__all__ = ["simulated"]
