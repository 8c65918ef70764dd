"""Training: CalTrain's partitioned loop (FrontNet in the enclave, BackNet on the host) and its plain twin.

Both run the same steps from `core` (data order, augmentation, optimizer, loss), which is what makes a
partitioned run reproduce a plain one bit for bit on CPU.
"""

from caltrain.training.config import TrainConfig

__all__ = ["TrainConfig"]
