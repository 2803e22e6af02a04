"""Functional JAX LLMs (LLaMA-3, Yi, Qwen2, Phi-3, GLM-4), any attention.

API (details in docs/models.md):

  config = ModelConfig.from_hf_config(json.load(open("config.json")))
  config = ModelConfig.llama3_8b()            # or .preset("qwen2_7b"), ...
  params = params_from_state_dict(config, state_dict, dtype=jnp.bfloat16)
  config, params = load_safetensors("ckpt_dir")   # file, dir or index.json
  model = CausalLM(config, params, attention=attn_fn)  # chunk_size=32768
  logits, cache = model(tokens,                # [B, T] int
                        positions=None,        # [B, T] RoPE positions
                        cache=None,            # or model.init_cache(B, S)
                        logits_for="last")     # "all" | index sequence
    # "last" -> [B, V], "all" -> [B, T, V], indices -> [B, M, V] (float32)
    # keyword options: q_offset (static int; None = decode from
    # cache.length), rope_seq_len. A given cache is donated. Prompts of
    # >= model.layerwise_from tokens (8192) run layer by layer:
  logits, cache = model.prefill(tokens)        # layer by layer, any length
  logits, cache = prefill(params, tokens, config=config, attention=attn_fn)
    # one compiled step per distinct layer (LayerwisePrefill)
  result = generate_greedy(model, prompt, max_new_tokens=32)
  save_params(dir, config, params); config, params = restore_params(dir)
  loaded = load_model("model.gguf" or "hf_dir", dtype="bfloat16")
    # .config, .params, .tokenizer; None loads the bundled SmolLM2

  sharded = shard_model(model, MeshConfig(sequence=8))   # same calls
  prefill = make_sharded_prefill(model, MeshConfig(sequence=2, tensor=4))
    # tokens -> logits over a mesh (DeepSpeed-Ulysses attention)

Params are a plain pytree of arrays (models/weights.py documents the
layout); the forward pass applies the Flax Linen `Decoder` to it
(`forward`, `forward_jit`). Every parameter and activation carries logical
axes (models/partitioning.py) that a MeshConfig's rules map to devices.
"""

from models.checkpoint import restore_params as restore_params
from models.checkpoint import save_params as save_params
from models.config import ARCHITECTURES as ARCHITECTURES
from models.config import PRESETS as PRESETS
from models.config import ModelConfig as ModelConfig
from models.config import detect_architecture as detect_architecture
from models.decoder import Decoder as Decoder
from models.decoder import abstract_params as abstract_params
from models.decoder import param_axes as param_axes
from models.generate import GenerationResult as GenerationResult
from models.generate import generate_greedy as generate_greedy
from models.layers import DEFAULT_CHUNK_SIZE as DEFAULT_CHUNK_SIZE
from models.layers import DenseAttention as DenseAttention
from models.layerwise import CompiledPrefill as CompiledPrefill
from models.layerwise import LayerAttentions as LayerAttentions
from models.layerwise import LayerwisePrefill as LayerwisePrefill
from models.layerwise import attention_layer_key as attention_layer_key
from models.layerwise import shared_step_attention as shared_step_attention
from models.llama import LAYERWISE_FROM as LAYERWISE_FROM
from models.llama import CausalLM as CausalLM
from models.llama import KVCache as KVCache
from models.llama import forward as forward
from models.llama import forward_jit as forward_jit
from models.llama import prefill as prefill
from models.loading import LoadedModel as LoadedModel
from models.loading import load_model as load_model
from models.memory import MemoryEstimate as MemoryEstimate
from models.memory import estimate_prefill_memory as estimate_prefill_memory
from models.memory import memory_table as memory_table
from models.partitioning import DEFAULT_RULES as DEFAULT_RULES
from models.partitioning import LOGICAL_AXES as LOGICAL_AXES
from models.partitioning import MeshConfig as MeshConfig
from models.partitioning import Partitioning as Partitioning
from models.rope import ROPE_KINDS as ROPE_KINDS
from models.rope import RopeConfig as RopeConfig
from models.rope import apply_rope as apply_rope
from models.rope import rope_cos_sin as rope_cos_sin
from models.safetensors_io import load_safetensors as load_safetensors
from models.safetensors_io import open_state_dict as open_state_dict
from models.safetensors_io import read_hf_config as read_hf_config
from models.sharded import ShardedPrefill as ShardedPrefill
from models.sharded import make_sharded_prefill as make_sharded_prefill
from models.sharded import shard_model as shard_model
from models.weights import Params as Params
from models.weights import expected_tensors as expected_tensors
from models.weights import mapping_table as mapping_table
from models.weights import param_shapes as param_shapes
from models.weights import param_shardings as param_shardings
from models.weights import params_from_state_dict as params_from_state_dict
from models.weights import params_to_state_dict as params_to_state_dict
from models.weights import random_params as random_params
