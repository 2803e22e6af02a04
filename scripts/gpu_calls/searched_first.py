"""Writes the fidelity eval config with the searched attention first, so a
call cut off at its time limit has finished the config that matters most.

  python3 scripts/gpu_calls/searched_first.py IN.yaml OUT.yaml
"""

import sys

import yaml

source, target = sys.argv[1:3]
config = yaml.safe_load(open(source))
config["attention"] = sorted(config["attention"],
                             key=lambda a: a["name"] != "searched")
yaml.safe_dump(config, open(target, "w"))
