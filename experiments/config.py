"""Experiment configs: YAML files under `configs/` plus `key=value` overrides.

Every `minference-jax` command reads its options the same way:

    minference-jax CMD [--config configs/.../NAME.yaml] [key=value ...]

The YAML file and the overrides fill a frozen dataclass (nested dataclasses
take dotted keys, `model.path=...`); override values are parsed as YAML
(`seq_lens=[4096,8192]`, `dense=false`). Unknown keys, values of the wrong
type and unreadable files raise `ConfigError`, whose message names the file
or key, what was expected and what was given. `save_resolved` writes the
resolved config beside a command's results, so every result records exactly
what made it.
"""

import dataclasses
import functools
import inspect
import sys
import types
import typing
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

C = TypeVar("C")

# The checkout's configs/ folder: the commands' default YAML files live in
# configs/experiments/ (found from any working directory).
REPO_DIR = Path(__file__).resolve().parent.parent
CONFIGS_DIR = REPO_DIR / "configs"


class ConfigError(ValueError):
  """A user's mistake in a config file, an override or a command argument.

  Commands print its message as one line (no traceback) and exit with 2.
  """


# ------------------------------------------------------------ coercion
def _type_name(hint) -> str:
  return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, key: str) -> Any:
  """Checks `value` against the field type `hint`, converting where safe."""
  origin = typing.get_origin(hint)
  args = typing.get_args(hint)
  if hint is Any:
    return value
  if origin in (typing.Union, types.UnionType):
    if value is None and type(None) in args:
      return None
    errors = []
    for arg in args:
      if arg is type(None):
        continue
      try:
        return _coerce(value, arg, key)
      except ConfigError as e:
        errors.append(str(e))
    raise ConfigError(
        f"config key {key!r} must be {' or '.join(map(_type_name, args))},"
        f" got {value!r}"
    )
  if origin is Literal:
    if value not in args:
      raise ConfigError(
          f"config key {key!r} must be one of {list(args)}, got {value!r}"
      )
    return value
  if origin is tuple:
    if not isinstance(value, (list, tuple)):
      value = [value]
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_coerce(v, args[0], f"{key}[{i}]")
                   for i, v in enumerate(value))
    if args and len(args) != len(value):
      raise ConfigError(
          f"config key {key!r} must have {len(args)} items, got {value!r}"
      )
    inner = args or (Any,) * len(value)
    return tuple(_coerce(v, h, f"{key}[{i}]")
                 for i, (v, h) in enumerate(zip(value, inner)))
  if origin is dict:
    if not isinstance(value, dict):
      raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
    kh, vh = args or (Any, Any)
    return {_coerce(k, kh, key): _coerce(v, vh, f"{key}.{k}")
            for k, v in value.items()}
  if dataclasses.is_dataclass(hint):
    if isinstance(value, hint):
      return value
    if not isinstance(value, dict):
      raise ConfigError(
          f"config key {key!r} must be a mapping of {hint.__name__}'s"
          f" fields, got {value!r}"
      )
    return _build(hint, value, prefix=f"{key}.")
  if hint is bool:
    if not isinstance(value, bool):
      raise ConfigError(f"config key {key!r} must be true or false, got"
                        f" {value!r}")
    return value
  if hint is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise ConfigError(f"config key {key!r} must be an int, got {value!r}")
    return value
  if hint is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
    return float(value)
  if hint is str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
      raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
    return str(value)
  return value


def _build(cls: type[C], raw: dict, prefix: str = "") -> C:
  hints = typing.get_type_hints(cls)
  fields = {f.name for f in dataclasses.fields(cls) if f.init}
  unknown = sorted(set(raw) - fields)
  if unknown:
    raise ConfigError(
        f"unknown config keys {[prefix + k for k in unknown]}; known:"
        f" {sorted(prefix + k for k in fields)}"
    )
  kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in raw.items()}
  try:
    return cls(**kwargs)
  except (TypeError, ValueError) as e:
    if isinstance(e, ConfigError):
      raise
    raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None


def _set_dotted(raw: dict, key: str, value: Any) -> None:
  parts = key.split(".")
  node = raw
  for part in parts[:-1]:
    child = node.setdefault(part, {})
    if not isinstance(child, dict):
      raise ConfigError(f"override {key!r}: {part!r} is not a mapping")
    node = child
  node[parts[-1]] = value


# ------------------------------------------------------------- loading
def read_yaml(path: str | Path) -> dict:
  """A YAML mapping from `path`; ConfigError naming the file otherwise."""
  path = Path(path)
  if not path.is_file():
    raise ConfigError(f"config file {path} does not exist")
  try:
    raw = yaml.safe_load(path.read_text())
  except yaml.YAMLError as e:
    raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
  if raw is None:
    warn(f"config file {path} is empty: every key takes its default")
    return {}
  if not isinstance(raw, dict):
    raise ConfigError(
        f"config file {path} must hold a mapping of keys, got"
        f" {type(raw).__name__}"
    )
  return raw


def load_config(cls: type[C], path: str | Path | None,
                overrides: Sequence[str] = ()) -> C:
  """Builds the frozen config dataclass `cls` from YAML plus overrides.

  Args:
    cls: a dataclass (fields may be nested dataclasses, tuples, Literals).
    path: a YAML file, or None for the dataclass defaults.
    overrides: `key=value` strings (dotted keys for nested fields); values
      are parsed as YAML, except that a text field (`str`, `str | None`)
      whose value YAML reads as another type (`yes: no`, `1e3`) takes the
      text as typed.

  Raises:
    ConfigError: on an unreadable file, a malformed override, an unknown
      key or a value of the wrong type.
  """
  raw = read_yaml(path) if path else {}
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"argument {item!r} is not key=value")
    key, value = item.split("=", 1)
    key = key.strip()
    try:
      parsed = yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
      parsed = value
    if (parsed is not None and not isinstance(parsed, str)
        and _is_text_field(cls, key)):
      parsed = value  # `prompt=yes: no` stays the text the user typed
    _set_dotted(raw, key, parsed)
  return _build(cls, raw)


def _is_text_field(cls: type, key: str) -> bool:
  """Whether the dotted `key` names a `str` (or `str | None`) field."""
  hint: Any = cls
  for part in key.split("."):
    if not dataclasses.is_dataclass(hint):
      return False
    hints = typing.get_type_hints(hint)
    if part not in hints:
      return False
    hint = hints[part]
  args = set(typing.get_args(hint)) - {type(None)}
  return hint is str or (typing.get_origin(hint) in (typing.Union,
                                                     types.UnionType)
                         and args == {str})


def usage(cls: type, default_config: str | Path | None) -> str:
  """A command's options: its config class's documentation and defaults."""
  source = (f"defaults from {repo_relative(default_config)}"
            if default_config else "defaults below")
  lines = [f"usage: [--config FILE.yaml] [key=value ...] ({source}; a"
           " key=value wins over the file; nested keys are dotted)", "",
           inspect.getdoc(cls) or cls.__name__, "",
           "built-in defaults (the config file's values replace them):"]
  for f in dataclasses.fields(cls):
    if f.default is not dataclasses.MISSING:
      default = f.default
    elif f.default_factory is not dataclasses.MISSING:
      default = f.default_factory()
    else:
      default = "(required)"
    lines.append(f"  {f.name}: {to_plain(default)!r}")
  return "\n".join(lines)


def parse_cli(cls: type[C], argv: Sequence[str],
              default_config: str | Path | None) -> tuple[C, str | None]:
  """`[--config PATH] key=value ...` -> (config, the YAML path used).

  `-h` / `--help` prints the options (`usage`) and exits.
  """
  if "-h" in argv or "--help" in argv:
    print(usage(cls, default_config))
    raise SystemExit(0)
  path = str(default_config) if default_config else None
  rest = []
  it = iter(argv)
  for arg in it:
    if arg == "--config":
      path = next(it, None)
      if path is None:
        raise ConfigError("--config needs a file path")
    elif arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    elif arg.startswith("-"):
      raise ConfigError(
          f"unknown option {arg!r}; options are --config PATH and key=value"
      )
    else:
      rest.append(arg)
  return load_config(cls, path, rest), path


# -------------------------------------------------------------- saving
def repo_relative(path: str | Path | None) -> str | None:
  """`path` relative to the checkout when it lies inside it, else as given.

  Results record the config file they came from; inside the checkout that
  is a path a reader can follow on any machine.
  """
  if path is None:
    return None
  try:
    return str(Path(path).resolve().relative_to(REPO_DIR))
  except ValueError:
    return str(path)


def to_plain(value: Any) -> Any:
  """Dataclasses, tuples and paths as YAML/JSON-friendly builtins."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return {f.name: to_plain(getattr(value, f.name))
            for f in dataclasses.fields(value)}
  if isinstance(value, (list, tuple)):
    return [to_plain(v) for v in value]
  if isinstance(value, dict):
    return {str(k): to_plain(v) for k, v in value.items()}
  if isinstance(value, Path):
    return str(value)
  return value


def save_resolved(cfg: Any, path: str | Path) -> Path:
  """Writes the resolved config as YAML (loadable with `--config`)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(yaml.safe_dump(to_plain(cfg), sort_keys=False))
  return path


# ------------------------------------------------------------ commands
def warn(message: str) -> None:
  """One line on stderr: an option that has no effect, or a run that goes
  on despite something the user should know."""
  print(f"warning: {message}", file=sys.stderr, flush=True)


def _warning_line(message, category, filename, lineno, file=None,
                  line=None) -> None:
  del category, filename, lineno, file, line
  warn(str(message))


def command(main: Callable[..., Any]) -> Callable[..., Any]:
  """Decorates a command's `main(argv)`: a user's mistake (ConfigError,
  a missing file) prints one line on stderr and exits with status 2; the
  library's warnings (e.g. an option that has no effect) print as one
  `warning:` line each."""

  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    with warnings.catch_warnings():
      warnings.showwarning = _warning_line
      try:
        return main(*args, **kwargs)
      except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
      except FileNotFoundError as e:
        print(f"error: {e.filename or e}: no such file", file=sys.stderr)
        raise SystemExit(2) from None

  return wrapped


# ---------------------------------------------------------------- meshes
def mesh_config(mesh: dict[str, Any] | None):
  """A config's `mesh:` block (`{data, sequence, tensor}` sizes, optional
  `rules`) as a `models.MeshConfig`, or None for one device (no block, or
  a mesh of one device).

  Raises:
    ConfigError: for a malformed block or a mesh whose size is not the
      number of devices this process sees.
  """
  if mesh is None:
    return None
  # Imported here: the config machinery itself needs neither JAX nor models.
  import jax

  from models.partitioning import MeshConfig

  try:
    config = MeshConfig.from_dict(mesh)
  except ValueError as e:
    raise ConfigError(f"mesh: {e}") from None
  if config.num_devices != jax.device_count():
    raise ConfigError(f"mesh: data x sequence x tensor = {config.shape} needs"
                      f" {config.num_devices} devices; this process sees"
                      f" {jax.device_count()}")
  return None if config.num_devices == 1 else config
