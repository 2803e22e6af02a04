"""Runs an EvalConfig: attention configs x lengths x tasks x cases.

Order: for each attention config and length (one compiled prefill per
batch shape), every task's unfinished cases in batches; then perplexity;
then the density/recall diagnostics. Each finished batch's cases are
appended to `results.jsonl` at once, so an interruption loses at most the
batch in flight, and a rerun skips every finished case.
"""

import dataclasses
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from experiments import model_context
from experiments.config import ConfigError, save_resolved
from experiments.datasets import prose
from experiments.datasets.prompting import PromptEncoder, TaskPrompt
from experiments.eval import diagnostics, model_calls, tasks
from experiments.eval.attention_configs import ResolvedAttention, resolve
from experiments.eval.config import (
    EvalConfig,
    check_lengths,
    check_pattern_files,
)
from experiments.eval.records import ResultsFile, case_key, digest
from experiments.eval.scoring import score
from models import CausalLM, LoadedModel, ModelConfig, load_model
from models.loading import load_tokenizer

DIAGNOSTICS_TASK = "diagnostics/attention"
DIAGNOSTICS_PROBE = "niah/needle"  # the prompt the diagnostics measure
_DIAGNOSTICS_SPEC = tasks.TaskSpec(DIAGNOSTICS_TASK, None, "density", 0)


def _spec(task: str) -> tasks.TaskSpec:
  return _DIAGNOSTICS_SPEC if task == DIAGNOSTICS_TASK else tasks.TASKS[task]


@dataclasses.dataclass(frozen=True)
class Case:
  """One planned case.

  Attributes:
    task: the task name.
    length: total tokens (prompt + generation reserve; PPL: the window).
    depth: the requested depth, or None (drawn from the seed).
    index: the sample index within its (task, length, depth) cell.
    seed: the generator seed.
  """

  task: str
  length: int
  depth: float | None
  index: int
  seed: int

  @property
  def case_id(self) -> str:
    where = "" if self.depth is None else f"/d={self.depth:g}"
    return f"L={self.length}{where}/i={self.index}"


def plan_cases(cfg: EvalConfig) -> dict[tuple[str, int], list[Case]]:
  """(task, length) -> its cases, deterministic for a config."""
  plan: dict[tuple[str, int], list[Case]] = {}
  for task in cfg.tasks:
    for length in cfg.lengths:
      cases = []
      if tasks.TASKS[task].metric == "perplexity":
        cases = [Case(task, length, None, i, cfg.seed + i)
                 for i in range(cfg.ppl_docs)]
      else:
        depths = cfg.depths if task in cfg.depth_tasks else (None,)
        for depth in depths:
          for i in range(cfg.samples):
            seed = tasks.case_seed(cfg.seed, task, length, depth, i)
            cases.append(Case(task, length, depth, i, seed))
      plan[(task, length)] = cases
  return plan


# ------------------------------------------------------------- the model
def model_geometry(cfg: EvalConfig) -> ModelConfig:
  """The model's config without reading its weights."""
  return model_context.model_geometry(cfg.model.path, "model.path")


def with_rope_scaling(config: ModelConfig, scaling: dict | None
                      ) -> ModelConfig:
  """The config with an HF `rope_scaling` dict applied (None: unchanged).

  Raises:
    ConfigError: for a scaling the RoPE code rejects.
  """
  return model_context.with_rope_scaling(config, scaling,
                                         "model.rope_scaling")


def make_encoder(loaded: LoadedModel, chat: bool | None) -> PromptEncoder:
  """Prompt encoder with the chat template where the model has one."""
  tok = loaded.tokenizer
  use_chat = (tok.chat_template is not None) if chat is None else chat
  if use_chat and tok.chat_template is None:
    raise ConfigError("model.chat is true but the tokenizer has no chat"
                      " template")
  template = None
  if use_chat:
    def template(messages):
      return tok.apply_chat_template(messages, add_generation_prompt=True,
                                     tokenize=False)
  bos = tok.bos_token_id if (tok.add_bos and not use_chat) else None
  return PromptEncoder(lambda s: tok.encode(s, add_bos=False), template, bos)


def _code_version() -> str | None:
  try:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, timeout=10,
                         cwd=Path(__file__).parent)
    return out.stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


# ------------------------------------------------------------------ run
class Runner:
  """State of one run: model, encoder, results file, prompt cache.

  Args:
    cfg: the run's config.
    loaded: the model (with RoPE scaling applied).
    platform: "gpu" or "cpu" ("auto" backends resolve on it).
    log: where one line per finished attention config and length goes
      (wall times there include the compiles).
  """

  def __init__(self, cfg: EvalConfig, loaded: LoadedModel, platform: str,
               log: Callable[[str], None] = print):
    self.cfg = cfg
    self.log = log
    self.loaded = loaded
    self.platform = platform
    self.encoder = make_encoder(loaded, cfg.model.chat)
    self.results = ResultsFile(cfg.output_path / "results.jsonl")
    self.prompts: dict[Case, tuple[list[int], TaskPrompt]] = {}
    self.encoded: dict[str, list[int]] = {}
    self.code_version = _code_version()
    self.device = jax.devices()[0].device_kind
    self.model_id = str(cfg.model.path or "SmolLM2-135M-Instruct (bundled"
                        " GGUF)")

  # -- identity
  def fingerprint(self, ra: ResolvedAttention) -> str:
    return digest({
        "model": self.model_id, "dtype": self.cfg.model.dtype,
        "rope": dataclasses.asdict(self.loaded.config.rope),
        "chat": self.encoder.chat, "attention": ra.describe(),
        "interpret": self.cfg.interpret,
        "reserve": self.cfg.generation_reserve,
        "data": prose.LICENCE,
    })

  def _base_record(self, ra, fp, case: Case) -> dict:
    spec = _spec(case.task)
    return {
        "case_key": case_key(fp, case.task, spec.version, case.case_id),
        "run_fingerprint": fp, "run": self.cfg.name,
        "suite": spec.suite, "task": case.task,
        "task_version": spec.version, "case_id": case.case_id,
        "attn_config": ra.spec.name, "attn_config_hash": digest(
            ra.describe()), "backend": ra.backend,
        "model": self.model_id, "dtype": self.cfg.model.dtype,
        "rope_kind": self.loaded.config.rope.kind,
        "target_length": case.length, "depth_percent": (
            None if case.depth is None else 100 * case.depth),
        "sample_index": case.index, "seed": case.seed,
        "chat_template": self.encoder.chat, "device": self.device,
        "code_version": self.code_version, "status": "ok",
    }

  def is_done(self, ra, fp, case: Case) -> bool:
    spec = _spec(case.task)
    return case_key(fp, case.task, spec.version,
                    case.case_id) in self.results.done

  # -- prompts
  def prompt(self, case: Case) -> tuple[list[int], TaskPrompt]:
    if case not in self.prompts:
      spec = tasks.TASKS[case.task]
      n_tokens = case.length - self.cfg.generation_reserve
      try:
        self.prompts[case] = tasks.make_prompt(spec, self.encoder, n_tokens,
                                               case.seed, case.depth)
      except ValueError as e:
        raise ConfigError(f"task {case.task} at length {case.length}: {e}"
                          ) from None
    return self.prompts[case]

  def documents(self, length: int) -> list[tuple[str, list[int]]]:
    """KJV books with at least `length` tokens, longest first; books are
    encoded longest first only until `ppl_docs` of them qualify."""
    tok = self.loaded.tokenizer
    bos = ([tok.bos_token_id] if tok.add_bos and tok.bos_token_id is not None
           else [])
    found = []
    for book in sorted(prose.books(), key=lambda b: -len(b.text)):
      if book.name not in self.encoded:
        self.encoded[book.name] = bos + tok.encode(book.text, add_bos=False)
      if len(self.encoded[book.name]) >= length:
        found.append((book.name, self.encoded[book.name]))
        if len(found) == self.cfg.ppl_docs:
          break
    return found

  # -- cases
  def run_generation(self, model, ra, fp, cases: list[Case],
                     bar: tqdm) -> None:
    spec = tasks.TASKS[cases[0].task]
    size = self.cfg.batch_size
    for start in range(0, len(cases), size):
      batch = cases[start:start + size]
      built = [self.prompt(c) for c in batch]
      rows = [ids for ids, _ in built]
      rows += [rows[-1]] * (size - len(rows))  # pad to the compiled shape
      begin = time.perf_counter()
      answers = model_calls.greedy_answers(
          model, np.asarray(rows, np.int32), spec.max_new_tokens,
          self.loaded.config.eos_token_ids, cases[0].length)
      wall = (time.perf_counter() - begin) / len(batch)
      for case, (ids, prompt), answer in zip(batch, built, answers):
        text = self.loaded.tokenizer.decode(answer, skip_special_tokens=True)
        record = self._base_record(ra, fp, case)
        record.update({
            "n_input_tokens": len(ids), "truncation": "none",
            "depth": prompt.depth, "answer_prefix": prompt.answer_prefix,
            "max_new_tokens": spec.max_new_tokens, "greedy": True,
            "prompt_hash": digest(ids), "prediction": text,
            "references": list(prompt.references),
            "scores": {spec.metric: score(spec.metric, text,
                                          prompt.references)},
            "meta": dict(prompt.meta), "timing": {"wall_s": wall},
        })
        self.results.append(record)
      bar.update(len(batch))

  def run_perplexity(self, model, ra, fp, cases: list[Case],
                     bar: tqdm) -> None:
    length = cases[0].length
    docs = self.documents(length)
    if len(docs) < self.cfg.ppl_docs:
      raise ConfigError(
          f"only {len(docs)} {prose.SOURCE_LABEL} books have {length} tokens;"
          f" lower ppl_docs (now {self.cfg.ppl_docs}) or the length")
    buckets = model_calls.position_buckets(length)
    size = self.cfg.ppl_batch_size
    for start in range(0, len(cases), size):
      batch = cases[start:start + size]
      chosen = [docs[c.index] for c in batch]
      rows = [ids[:length] for _, ids in chosen]
      rows += [rows[-1]] * (size - len(rows))
      begin = time.perf_counter()
      nll = model_calls.token_nll(model, np.asarray(rows, np.int32))
      wall = (time.perf_counter() - begin) / len(batch)
      for row, (case, (name, _)) in enumerate(zip(batch, chosen)):
        sums = model_calls.bucket_sums(nll[row], buckets)
        total = float(nll[row].sum(dtype=np.float64))
        count = int(nll.shape[1])
        record = self._base_record(ra, fp, case)
        record.update({
            "n_input_tokens": length, "truncation": "prefix",
            "document": name, "nll_sum": total, "n_tokens": count,
            "buckets": [[lo, hi, s, n] for (lo, hi), (s, n)
                        in zip(buckets, sums)],
            "scores": {"ppl": float(np.exp(total / count))},
            "prompt_hash": digest(rows[row]), "timing": {"wall_s": wall},
        })
        self.results.append(record)
      bar.update(len(batch))

  def run_diagnostics(self, model, ra, fp, length: int) -> None:
    for i in range(self.cfg.density_samples):
      seed = tasks.case_seed(self.cfg.seed, DIAGNOSTICS_PROBE, length, 0.5, i)
      probe = Case(DIAGNOSTICS_PROBE, length, 0.5, i, seed)
      case = Case(DIAGNOSTICS_TASK, length, 0.5, i, seed)
      record = self._base_record(ra, fp, case)
      if record["case_key"] in self.results.done:
        continue
      ids, _ = self.prompt(probe)
      begin = time.perf_counter()
      if ra.patterns is None:
        n_layers = self.loaded.config.num_layers
        stats = {"density": 1.0, "recall": 1.0,
                 "layer_density": [1.0] * n_layers,
                 "layer_recall": [1.0] * n_layers,
                 "layer_min_recall": [1.0] * n_layers}
      else:
        records = diagnostics.record_qk(model, np.asarray([ids], np.int32))
        heads = self.loaded.config.num_heads
        stats = diagnostics.config_stats(
            records, lambda layer: ra.layer_patterns(layer, heads))
      record.update({"n_input_tokens": len(ids), "probe": DIAGNOSTICS_PROBE,
                     "scores": {"density": stats["density"],
                                "recall": stats["recall"]},
                     **{k: v for k, v in stats.items()
                        if k.startswith("layer_")},
                     "timing": {"wall_s": time.perf_counter() - begin}})
      self.results.append(record)

  def run(self, plan: dict[tuple[str, int], list[Case]],
          resolved: dict[tuple[str, int], ResolvedAttention]) -> None:
    todo = []
    for spec in self.cfg.active_attention():
      for length in self.cfg.lengths:
        ra = resolved[(spec.name, length)]
        fp = self.fingerprint(ra)
        for task in self.cfg.tasks:
          cases = [c for c in plan[(task, length)]
                   if not self.is_done(ra, fp, c)]
          if cases:
            todo.append((ra, fp, task, cases))
    total = sum(len(c) for *_, c in todo)
    config = self.loaded.config
    bar = tqdm(total=total, desc="eval cases", unit="case", disable=None)
    try:
      for spec in self.cfg.active_attention():
        for length in self.cfg.lengths:
          ra = resolved[(spec.name, length)]
          fp = self.fingerprint(ra)
          model = CausalLM(config, self.loaded.params,
                           attention=ra.make(self.cfg.interpret),
                           layerwise_from=self.cfg.layerwise_from)
          begin, count = time.perf_counter(), 0
          for r, f, task, cases in todo:
            if r is not ra:
              continue
            count += len(cases)
            bar.set_postfix_str(f"{spec.name} L={length} {task}")
            if tasks.TASKS[task].metric == "perplexity":
              self.run_perplexity(model, ra, fp, cases, bar)
            else:
              self.run_generation(model, ra, fp, cases, bar)
          if self.cfg.density_samples:
            bar.set_postfix_str(f"{spec.name} L={length} diagnostics")
            self.run_diagnostics(model, ra, fp, length)
          self.log(f"{spec.name} L={length}: {count} cases"
                   f" ({ra.backend}) in {time.perf_counter() - begin:.1f} s")
    finally:
      bar.close()


def prepare(cfg: EvalConfig, geometry: ModelConfig, platform: str
            ) -> dict[tuple[str, int], ResolvedAttention]:
  """All checks that need no weights; the resolved attention per length.

  Raises:
    ConfigError: a missing/bad pattern file, a length above the model's
      limit, a config that does not fit the model.
  """
  check_pattern_files(cfg)
  check_lengths(cfg, geometry)
  return {(spec.name, length): resolve(cfg, spec, length,
                                       geometry.num_layers,
                                       geometry.num_heads, platform)
          for spec in cfg.active_attention() for length in cfg.lengths}


def run_eval(cfg: EvalConfig, loaded: LoadedModel | None = None, *,
             platform: str | None = None,
             log: Callable[[str], None] = print) -> Path:
  """Runs (or resumes) the evaluation; returns the results file.

  Args:
    cfg: the config.
    loaded: a model to use instead of loading `cfg.model` (tests).
    platform: overrides `jax.default_backend()`.
    log: where progress lines go.

  Raises:
    ConfigError: for a user's mistake, before any model work.
  """
  platform = platform or jax.default_backend()
  check_pattern_files(cfg)  # cheap checks first
  geometry = loaded.config if loaded is not None else model_geometry(cfg)
  resolved = prepare(cfg, geometry, platform)
  out = cfg.output_path
  out.mkdir(parents=True, exist_ok=True)
  save_resolved(cfg, out / "resolved_config.yaml")
  if loaded is None and cfg.model.chat:  # before the weights
    if load_tokenizer(cfg.model.path).chat_template is None:
      raise ConfigError("model.chat is true but the tokenizer has no chat"
                        " template")
  if loaded is None:
    log(f"loading {cfg.model.path or 'the bundled SmolLM2-135M-Instruct'}"
        f" ({cfg.model.dtype})")
    loaded = load_model(cfg.model.path, cfg.model.dtype)
  loaded = dataclasses.replace(
      loaded, config=with_rope_scaling(loaded.config, cfg.model.rope_scaling))
  runner = Runner(cfg, loaded, platform, log)
  for path in cfg.resume_from:
    log(f"resumed {runner.results.import_from(path)} cases from {path}")
  plan = plan_cases(cfg)
  (out / "plan.json").write_text(json.dumps(
      {f"{t}@{n}": len(c) for (t, n), c in plan.items()}, indent=1))
  runner.run(plan, resolved)
  return runner.results.path
