"""Computed (not measured) peak device memory of a long-context prefill."""

import dataclasses
from collections.abc import Sequence
from typing import Literal

from minference_jax.index import layout_bytes, layout_workspace_bytes
from models.config import ModelConfig

GIB = 1024**3
# MInference's vertical-slash estimate scores the last 64 queries against
# every key (reference/minference.md).
VS_LAST_Q = 64

AttentionKind = Literal["dense_cudnn", "dense_xla", "vertical_slash"]


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
  """Peak-memory terms in bytes for one prefill (see estimate_prefill_memory).

  Attributes:
    seq_len, batch, keep_kv_cache, chunk_size: the scenario.
    weights: all parameters.
    kv_cache: the preallocated cache for all layers (0 when prefill-only).
    activations: the largest set of live activations inside one layer.
    attention_workspace: scratch of the attention callable for one layer.
    logits: float32 logits for the requested positions.
    host_kv_cache: the cache kept in host memory instead (not in total).
  """

  seq_len: int
  batch: int
  keep_kv_cache: bool
  chunk_size: int | None
  weights: int
  kv_cache: int
  activations: int
  attention_workspace: int
  logits: int
  host_kv_cache: int = 0

  @property
  def total(self) -> int:
    return (self.weights + self.kv_cache + self.activations
            + self.attention_workspace + self.logits)


def vs_estimate_workspace(config: ModelConfig, seq_len: int,
                          batch: int = 1) -> int:
  """float32 scores + probabilities of the last-64-query VS estimate."""
  return 2 * batch * config.num_heads * VS_LAST_Q * seq_len * 4


def vs_layout_workspace(config: ModelConfig, seq_len: int, n_vertical: int,
                        n_slash: int, batch: int = 1) -> int:
  """Bytes of one layer's expanded Vertical-Slash layout and its builder.

  The layout (`minference_jax.index.vertical_slash_layout`) holds int32
  block_offset [B, N, Tb, NS] and column_index [B, N, Tb, NV] (Tb = T / 64,
  NS and NV capped at T) plus two [B, N, Tb] counts. Its builder's
  temporaries (`minference_jax.index.layout_workspace_bytes`, fitted to
  XLA's buffer assignment; how close the fit is, by length: docs/models.md)
  are 2-4x the layout when all heads are built at once; past the builder's
  default cap it builds groups of heads one after another, and the
  temporaries are one group's builder plus one group's layout. At 1M tokens,
  32 heads and (1000, 6096) lines: 14.9 GB of layout, and 34.3 GB of
  temporaries at once or 12.3 GB in groups of 8 heads.
  """
  heads = config.num_heads
  return (layout_bytes(batch, heads, seq_len, n_vertical, n_slash)
          + layout_workspace_bytes(batch, heads, seq_len, n_vertical,
                                   n_slash))


def attention_workspace(
    config: ModelConfig,
    seq_len: int,
    attention: AttentionKind,
    *,
    batch: int = 1,
    n_vertical: int = 1000,
    n_slash: int = 6096,
    scores: Literal["xla", "pallas"] = "pallas",
) -> int:
  """Scratch bytes of one layer's attention call.

  Args:
    config: the geometry.
    seq_len: T.
    attention: "dense_cudnn" (flash attention: float32 softmax statistics
      [B, N, T]), "dense_xla" (the chunked XLA path: the same statistics
      plus one [B, N, 512, 512] float32 tile set) or "vertical_slash" (the
      online estimate's scores and the expanded layout).
    batch: B.
    n_vertical, n_slash: the largest Vertical-Slash budgets of the layer.
    scores: the estimate's scores: "xla" ([B, N, 64, T] float32 scores and
      probabilities, `vs_estimate_workspace`) or "pallas" (the fused kernel:
      two [B, N, T] float32 line scores).

  Raises:
    ValueError: an unknown attention kind.
  """
  stats = batch * config.num_heads * seq_len * 4 * 2
  if attention == "dense_cudnn":
    return stats
  if attention == "dense_xla":
    return stats + batch * config.num_heads * 512 * 512 * 4 * 3
  if attention != "vertical_slash":
    raise ValueError(f"unknown attention kind {attention!r}")
  if scores == "xla":
    est = vs_estimate_workspace(config, seq_len, batch)
  else:
    est = 2 * batch * config.num_heads * seq_len * 4
  return est + vs_layout_workspace(config, seq_len, n_vertical, n_slash,
                                   batch)


def estimate_prefill_memory(
    config: ModelConfig,
    seq_len: int,
    *,
    batch: int = 1,
    keep_kv_cache: bool = False,
    kv_cache_on_host: bool = False,
    chunk_size: int | None = 4096,
    dtype_bytes: int = 2,
    attention_workspace: int | None = None,
    logits_positions: int = 1,
) -> MemoryEstimate:
  """Peak memory of a prefill through models/llama.py, by accounting.

  Model of the peak (one layer is live at a time; XLA frees a layer's
  activations before the next), the largest of three phases:
    * projections: residual x [B,T,H], the float32 cos/sin tables
      [B,T,R/2], q [B,T,N,D], k and v [B,T,K,D] (when chunked,
      `models.layers.seq_chunked` writes each chunk's q, k, v into their
      buffers: no copies);
    * attention: x, q, k, v, the attention output [B,T,N,D], the RoPE
      tables and the attention workspace;
    * output/MLP: x, the attention output and one chunk's temporaries: the
      float32 norm input [c,H] and (3 * dtype_bytes + 5) bytes per [c,I]
      element for gate, up and their product (what XLA's buffer assignment
      holds for the SwiGLU MLP at 16K-1M tokens; docs/models.md);
      unchunked, also the new
      residual (chunked, each chunk's result is written over x in place).
  The KV cache, when kept, holds K and V for all layers at full length.
  `activations` is the peak net of the attention workspace, so that
  `total` is the peak whichever phase sets it.

  Args:
    config: the geometry.
    seq_len: prompt tokens T.
    batch: B.
    keep_kv_cache: preallocate a cache for all T tokens (for decoding).
    kv_cache_on_host: the kept cache lives in host memory (pinned_host):
      counted in `host_kv_cache`, not in the device total.
    chunk_size: sequence chunk for norms/MLP (None: unchunked).
    dtype_bytes: bytes per parameter/activation (2 for bfloat16).
    attention_workspace: bytes of attention scratch per layer; default the
      MInference vertical-slash estimate (vs_estimate_workspace); see
      `attention_workspace()` for dense attention and the layouts.
    logits_positions: positions whose float32 logits are produced.

  Returns:
    A MemoryEstimate (bytes).

  Raises:
    ValueError: for non-positive sizes.
  """
  if seq_len <= 0 or batch <= 0:
    raise ValueError(f"seq_len and batch must be positive, got {seq_len}, "
                     f"{batch}")
  c = config
  tokens = batch * seq_len
  x = tokens * c.hidden_size * dtype_bytes
  q = tokens * c.q_dim * dtype_bytes
  kv = 2 * tokens * c.kv_dim * dtype_bytes
  o = q
  rope = 2 * tokens * (c.rope.rotary_dim // 2) * 4
  if attention_workspace is None:
    attention_workspace = vs_estimate_workspace(c, seq_len, batch)
  chunked = chunk_size is not None and chunk_size < seq_len
  chunk = batch * min(chunk_size, seq_len) if chunked else tokens
  chunk_tmp = chunk * (c.hidden_size * 4
                       + c.intermediate_size * (3 * dtype_bytes + 5))
  projection_phase = x + rope + q + kv
  attention_phase = x + q + kv + o + rope + attention_workspace
  mlp_phase = x + o + (0 if chunked else x) + chunk_tmp
  peak = max(projection_phase, attention_phase, mlp_phase)
  activations, workspace = peak - attention_workspace, attention_workspace
  cache = tokens * c.kv_bytes_per_token(dtype_bytes) if keep_kv_cache else 0
  return MemoryEstimate(
      seq_len=seq_len,
      batch=batch,
      keep_kv_cache=keep_kv_cache,
      chunk_size=chunk_size,
      weights=c.num_params() * dtype_bytes,
      kv_cache=0 if kv_cache_on_host else cache,
      host_kv_cache=cache if kv_cache_on_host else 0,
      activations=activations,
      attention_workspace=workspace,
      logits=batch * logits_positions * c.vocab_size * 4,
  )


def estimate_table(first_column: str, rows: Sequence[tuple]) -> str:
  """A Markdown table (GiB) of memory estimates.

  Args:
    first_column: the heading of the row labels.
    rows: (label, KV cache kept, estimate with weights, kv_cache,
      activations, attention_workspace and total in bytes) per row.
  """
  lines = [f"| {first_column} | KV cache kept | weights | KV cache |"
           " activations | attn workspace | total |",
           "|---|:---:|---:|---:|---:|---:|---:|"]
  for label, keep, e in rows:
    cells = [e.weights, e.kv_cache, e.activations, e.attention_workspace,
             e.total]
    lines.append(f"| {label} | {'yes' if keep else 'no'} | "
                 + " | ".join(f"{v / GIB:.1f}" for v in cells) + " |")
  return "\n".join(lines)


def memory_table(
    config: ModelConfig,
    seq_lens: Sequence[int],
    *,
    chunk_size: int | None = 4096,
) -> str:
  """A Markdown table (GiB) of prefill-only and with-cache estimates."""
  return estimate_table("tokens", [
      (f"{t:,}", keep, estimate_prefill_memory(
          config, t, keep_kv_cache=keep, chunk_size=chunk_size))
      for t in seq_lens for keep in (False, True)])
