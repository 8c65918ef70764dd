"""Exact, private sums of gradients across enclaves, carried by the hosts' ordinary integer all-reduce.

Every enclave turns its part of a step's gradient into fixed point (`quantize`: `FRAC_BITS` fractional bits,
rounded to nearest), so that the sum over workers is an integer sum: exact and independent of how the
micro-batches were split, hence bit-identical for any number of workers. `SecureSum` then hides it from the hosts:

- values live in Z/2^56 (`MODULUS`); with at most `MAX_WORLD` workers the hosts' int64 sum never overflows;
- each pair of workers (r < s) shares a mask, drawn from AES-256-CTR under a key derived from the job key the
  enclaves share; r adds it and s subtracts it, so every contribution the hosts see is uniformly random while
  the masks cancel in the sum;
- rank 0 also adds a common mask that every enclave removes inside: the sum the hosts hand back is uniformly
  random too, so the hosts learn neither any worker's gradient nor the aggregate;
- three linear MACs (coefficients secret per step, modulo three primes near 2^31) travel masked beside the
  gradient. After removing the common mask the enclave checks the range of every element (each micro-batch
  contributes at most 2^`MICRO_BITS` in magnitude) and the tags: a host that alters the sum passes with
  probability at most 2^-62 (the range check makes any alteration nonzero modulo at least two of the primes).

Mask streams are keyed per pair and per purpose (HKDF of the job key), and the AES-CTR nonce names the step and
the stream, so no keystream is ever reused.
"""

from __future__ import annotations

import struct
from functools import cached_property

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from caltrain.crypto.hashing import tagged_hash
from caltrain.errors import TrainingError
from caltrain.training.errors import AggregateTampered, FixedPointRange

FRAC_BITS = 24
MICRO_BITS = 36  # |one micro-batch's quantized element| < 2^36, i.e. |gradient| < 2^12
MODULUS_BITS = 56
MODULUS = 1 << MODULUS_BITS
MAX_WORLD = 64  # 64 * 2^56 = 2^62: the hosts' int64 sum of masked values never overflows
TAG_PRIMES = (2147483647, 2147483629, 2147483587)
TAGS = len(TAG_PRIMES)
KEY_BYTES = 32
_SCALE = float(1 << FRAC_BITS)
_MASK_STREAM = 0






def quantize(grad: torch.Tensor) -> torch.Tensor:
    """`grad` as int64 fixed point (round to nearest even); refuses values outside +-2^(MICRO_BITS - FRAC_BITS)."""
    scaled = torch.round(grad.detach().double().flatten() * _SCALE)
    limit = float(1 << MICRO_BITS)
    if not bool(torch.isfinite(scaled).all()) or bool((scaled.abs() >= limit).any()):
        raise FixedPointRange(f"a gradient element is non-finite or beyond +-{limit / _SCALE:g}; step refused")
    return scaled.to(torch.int64)


def dequantize(total: torch.Tensor) -> torch.Tensor:
    """An int64 fixed-point sum as float32 (exact through float64: every sum is below 2^53)."""
    return (total.double() / _SCALE).float()


def micro_bound(micros: int) -> int:
    """The largest magnitude a sum of `micros` micro-batches can reach."""
    return micros * ((1 << MICRO_BITS) - 1)


def _keystream(key: bytes, step: int, stream: int, count: int) -> np.ndarray:
    """`count` uint64 words of AES-256-CTR under `key`; the nonce block is (step, stream, counter 0)."""
    nonce = struct.pack(">QII", step, stream, 0)
    out = bytearray(8 * count + 15)  # `update_into` wants a block's slack; it is several times faster than `update`
    Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor().update_into(bytes(8 * count), out)
    return np.frombuffer(out, dtype="<u8", count=count)


class SecureSum:
    """One worker's side of the masked sum of a `size`-element fixed-point vector, for `world` workers."""

    def __init__(self, job_key: bytes, *, rank: int, world: int, size: int) -> None:
        if len(job_key) != KEY_BYTES:
            raise TrainingError(f"the aggregation key must be {KEY_BYTES} bytes")
        if not 1 <= world <= MAX_WORLD or not 0 <= rank < world:
            raise TrainingError(f"rank {rank} of {world}: at most {MAX_WORLD} workers")
        self._job_key, self.rank, self.world, self.size = job_key, rank, world, size

    @property
    def wire_size(self) -> int:
        """Elements the hosts all-reduce: the gradient and its tags."""
        return self.size + TAGS

    def _derive(self, *purpose: bytes) -> bytes:
        info = tagged_hash("caltrain/aggregation-key/v1", *purpose)
        return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(self._job_key)

    @cached_property
    def _pair_keys(self) -> dict[int, bytes]:
        return {
            peer: self._derive(b"pair", *(str(i).encode() for i in sorted((self.rank, peer))))
            for peer in range(self.world)
            if peer != self.rank
        }

    @cached_property
    def _common_key(self) -> bytes:
        return self._derive(b"common")

    @cached_property
    def _tag_key(self) -> bytes:
        return self._derive(b"tags")

    def _coefficients(self, step: int, index: int) -> np.ndarray:
        return _keystream(self._tag_key, step, 1 + index, self.size) % np.uint64(TAG_PRIMES[index])

    def _tags(self, step: int, values: np.ndarray) -> np.ndarray:
        """The linear MACs of `values` (int64, possibly negative), one per prime, as uint64."""
        tags = np.empty(TAGS, dtype=np.uint64)
        for j, p in enumerate(TAG_PRIMES):
            residues = np.mod(values, p).astype(np.uint64)
            products = (self._coefficients(step, j) * residues) % np.uint64(p)  # each < 2^62
            tags[j] = int(products.sum(dtype=np.uint64)) % p  # a sum of < 2^33 terms below 2^31 fits
        return tags

    def _masks(self, step: int) -> np.ndarray:
        total = np.zeros(self.wire_size, dtype=np.uint64)
        for peer, key in self._pair_keys.items():
            stream = _keystream(key, step, _MASK_STREAM, self.wire_size)
            total = total + stream if self.rank < peer else total - stream  # wraps mod 2^64; reduced below
        if self.rank == 0:
            total = total + self._common_key_stream(step)
        return total & np.uint64(MODULUS - 1)

    def _common_key_stream(self, step: int) -> np.ndarray:
        return _keystream(self._common_key, step, _MASK_STREAM, self.wire_size)

    def mask(self, step: int, values: torch.Tensor) -> torch.Tensor:
        """This worker's contribution for `step`: its fixed-point `values` and their tags, masked; in [0, 2^56)."""
        x = values.numpy().astype(np.int64)
        if x.shape != (self.size,):
            raise TrainingError(f"expected {self.size} gradient elements, got {tuple(x.shape)}")
        plain = np.concatenate([x.astype(np.uint64), self._tags(step, x)])  # negatives wrap: fine mod 2^56
        masked = (plain + self._masks(step)) & np.uint64(MODULUS - 1)
        return torch.from_numpy(masked.view(np.int64).copy())

    def unmask(self, step: int, total: torch.Tensor, *, micros: int) -> torch.Tensor:
        """The true int64 sum from the hosts' all-reduced `total`, once its range and tags check out."""
        z = total.numpy()
        if z.shape != (self.wire_size,) or z.dtype != np.int64:
            raise AggregateTampered(f"the aggregate must be {self.wire_size} int64 elements")
        if bool((z < 0).any()) or bool((z >= self.world * MODULUS).any()):
            raise AggregateTampered("the aggregate holds values no sum of masked contributions can reach")
        raw = (z.astype(np.uint64) - self._common_key_stream(step)) & np.uint64(MODULUS - 1)
        centered = raw.astype(np.int64)
        centered[centered >= MODULUS // 2] -= MODULUS
        values, tags = centered[: self.size], raw[self.size :]
        if bool((np.abs(values) > micro_bound(micros)).any()):
            raise AggregateTampered(f"step {step}: an element lies outside what {micros} micro-batches sum to")
        limits = np.array([self.world * p for p in TAG_PRIMES], dtype=np.uint64)
        if bool((tags >= limits).any()) or not np.array_equal(tags % np.array(TAG_PRIMES, dtype=np.uint64),
                                                              self._tags(step, values)):
            raise AggregateTampered(f"step {step}: the aggregate's MAC does not verify; step refused")
        return torch.from_numpy(values.copy())
