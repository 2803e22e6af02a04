"""Small stand-ins for the eval tests: a byte-level BPE tokenizer trained in
a fraction of a second on the prose corpus (any text encodes: its alphabet
is every byte), with a ChatML chat template, and a 2-layer random model."""

import functools

import jax.numpy as jnp
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from experiments.datasets import prose
from models import LoadedModel, ModelConfig, RopeConfig, random_params
from models.tokenizer import Tokenizer

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'"
    " + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}")


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> Tokenizer:
  """A 400-id byte-level BPE with <|im_start|>/<|im_end|> specials."""
  backend = tokenizers.Tokenizer(models.BPE())
  backend.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False)])
  backend.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>",
                                      "<|im_end|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False)
  backend.train_from_iterator(list(prose.sentences()[:600]), trainer)
  return Tokenizer(backend, eos_token="<|im_end|>", chat_template=CHATML)


def tiny_model(max_len: int = 4096, seed: int = 0) -> LoadedModel:
  """A random 2-layer LLaMA (N=4, K=2, D=16) over the tiny tokenizer."""
  tok = tiny_tokenizer()
  rope = RopeConfig(theta=10000.0, rotary_dim=16,
                    max_position_embeddings=max_len)
  config = ModelConfig.tiny(vocab_size=tok.vocab_size, rope=rope,
                            max_position_embeddings=max_len,
                            eos_token_ids=(tok.eos_token_id,))
  params = random_params(config, seed, dtype=jnp.float32)
  return LoadedModel(config, params, tok, prose.corpus_path())
