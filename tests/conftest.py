"""One torch thread per test process: two cores, and oversubscription makes small convolutions crawl."""

import torch

torch.set_num_threads(1)
