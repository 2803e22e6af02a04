"""Model parameters and prompts for the prefill benchmark.

Random weights are `models.random_params(on_device=True)`: drawn on the
device, one jitted draw per parameter, directly in the target dtype (no
float32 copy of the model and no host-to-device copy: 8B parameters are
16 GB in bf16, 32 GB in f32), each straight into its shards on a mesh.
A model slice (`experiments.model_slice`) brings real weights and
real text.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.model_slice import ModelSlice, load_slice
from models import ModelConfig, Params, Partitioning, random_params


def device_random_params(config: ModelConfig, seed: int, dtype: Any,
                         std: float = 0.02,
                         partitioning: Partitioning | None = None) -> Params:
  """Random-normal params drawn on the device (norm gains 1 + noise).

  Args:
    config: the geometry.
    seed: PRNG seed (one key per parameter, split in tree order).
    dtype: parameter dtype.
    std: standard deviation of every weight.
    partitioning: place each parameter in its shards over this mesh
      (None: the default device).

  Returns:
    The params pytree (models/weights.py layout).
  """
  return random_params(config, seed, jnp.dtype(dtype), std, on_device=True,
                       partitioning=partitioning)


def random_tokens(vocab_size: int, batch: int, seq_len: int,
                  seed: int) -> jax.Array:
  """Uniform token ids [B, T] int32, drawn on the device."""
  key = jax.random.fold_in(jax.random.key(seed), seq_len)
  return jax.random.randint(key, (batch, seq_len), 0, vocab_size, jnp.int32)


def slice_tokens(model_slice: ModelSlice, batch: int,
                 seq_len: int) -> jax.Array:
  """The slice's real-text stream, first T tokens, as [B, T] compact ids.

  Raises:
    ValueError: T longer than the stream.
  """
  total = len(model_slice.tokens)
  if seq_len > total:
    raise ValueError(f"seq_len {seq_len} exceeds the slice's text stream"
                     f" ({total} tokens)")
  ids = np.asarray(model_slice.tokens[:seq_len], np.int32)
  return jnp.asarray(np.broadcast_to(ids, (batch, seq_len)))


def file_tokens(path: str, batch: int, seq_len: int,
                vocab_size: int) -> jax.Array:
  """The first T ids of a .npy token stream as [B, T].

  Raises:
    ValueError: a stream shorter than T or ids outside the vocabulary.
  """
  ids = np.load(path, mmap_mode="r").reshape(-1)
  if len(ids) < seq_len:
    raise ValueError(f"{path} holds {len(ids)} tokens, fewer than"
                     f" seq_len={seq_len}")
  ids = np.asarray(ids[:seq_len], np.int32)
  if ids.min() < 0 or ids.max() >= vocab_size:
    raise ValueError(f"{path}: token ids outside [0, {vocab_size})")
  return jnp.asarray(np.broadcast_to(ids, (batch, seq_len)))


def load_model_slice(path: str) -> ModelSlice:
  """`load_slice` (FileNotFoundError says how to make the file)."""
  return load_slice(path)


def layer_subset(params: Params, layers: list[int]) -> Params:
  """The params of a model made of the given layers (no copies)."""
  return {**params, "layers": [params["layers"][i] for i in layers]}
