"""caltrain: confidential and accountable deep learning on trusted execution environments.

Layers (each imports only the ones below it):
cli/service > accountability, exposure > training, inference > enclave > models, data > attestation > crypto.
"""

from caltrain.errors import CaltrainError

__all__ = ["CaltrainError", "__version__"]
__version__ = "0.1.0"
