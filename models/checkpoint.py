"""Orbax save/restore of converted params, with the config beside them."""

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from models.config import ModelConfig
from models.partitioning import Partitioning
from models.weights import Params, param_shapes, param_shardings

CONFIG_NAME = "model_config.json"
PARAMS_DIR = "params"
FORMAT_VERSION = 1


def save_params(
    directory: str | Path,
    config: ModelConfig,
    params: Params,
    *,
    force: bool = False,
) -> Path:
  """Writes params (orbax) and the config (JSON) into `directory`.

  Args:
    directory: target folder (created; must not hold a checkpoint unless
      force).
    config: the model config.
    params: the params pytree (all leaves one dtype).
    force: overwrite an existing checkpoint.

  Returns:
    The absolute checkpoint directory.

  Raises:
    FileExistsError: if a checkpoint exists and force is False.
    ValueError: if the params do not match the config's shapes.
  """
  directory = Path(directory).absolute()
  if (directory / CONFIG_NAME).exists() and not force:
    raise FileExistsError(f"a checkpoint already exists in {directory}")
  leaves = jax.tree.leaves(params)
  dtypes = {str(jnp.dtype(x.dtype)) for x in leaves}
  if len(dtypes) != 1:
    raise ValueError(f"params mix dtypes {sorted(dtypes)}; cast them first")
  dtype = dtypes.pop()
  expected = param_shapes(config, dtype)
  got = jax.tree.map(lambda x: tuple(x.shape), params)
  want = jax.tree.map(lambda s: tuple(s.shape), expected)
  if got != want:
    raise ValueError("params do not match the config's parameter shapes")
  directory.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(directory / PARAMS_DIR, params, force=force)
    ckptr.wait_until_finished()
  meta = {"format_version": FORMAT_VERSION, "dtype": dtype,
          "config": config.to_dict()}
  (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=1))
  return directory


def restore_params(
    directory: str | Path,
    *,
    dtype: Any = None,
    partitioning: Partitioning | None = None,
) -> tuple[ModelConfig, Params]:
  """Reads a checkpoint written by save_params.

  Args:
    directory: the checkpoint folder.
    dtype: cast the restored params to this dtype (default: as saved).
    partitioning: restore each parameter straight into its shards over
      this mesh (logical rules; models.weights.param_shardings); default
      the first device.

  Returns:
    (config, params).

  Raises:
    FileNotFoundError: if the folder holds no checkpoint.
    ValueError: for an unknown format version.
  """
  directory = Path(directory).absolute()
  meta_path = directory / CONFIG_NAME
  if not meta_path.is_file():
    raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}")
  meta = json.loads(meta_path.read_text())
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"unknown checkpoint format {meta.get('format_version')}")
  config = ModelConfig.from_dict(meta["config"])
  shapes = param_shapes(config, meta["dtype"])
  if partitioning is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, shapes)
  else:
    shardings = param_shardings(config, partitioning)
  target = jax.tree.map(
      lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                               sharding=sharding),
      shapes, shardings)
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(directory / PARAMS_DIR, target)
  if dtype is not None:
    params = jax.tree.map(lambda x: x.astype(dtype), params)
  return config, params
