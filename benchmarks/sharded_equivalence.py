"""The sharded training step (models.sharding) against the single-device step, for every
(dp, fsdp, cp, tp) with product 8 and sequence parallelism wherever tp > 1 (30 layouts), on 8
simulated CPU devices. Prints loss and the largest parameter difference after one AdamW step.

    python benchmarks/sharded_equivalence.py
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    env = dict(os.environ, PYTHONPATH=str(ROOT), ALLOW_MULTIPLE_LIBTPU_LOAD="1", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "tests.sharded_worker", "--all"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr[-3000:])
    rows = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))[7:])["equivalence"]
    print(f"{'layout':<42} {'loss':>10} {'1-device':>10} {'max |dparam|':>13} {'sharded params':>15}")
    for r in rows:
        print(f"{r['layout']:<42} {r['loss']:>10.6f} {r['ref_loss']:>10.6f} {r['param_diff']:>13.2e} "
              f"{r['sharded_params']:>15}")
    worst = max(r["param_diff"] for r in rows)
    print(f"{len(rows)} layouts; worst parameter difference {worst:.2e}; "
          f"worst loss difference {max(abs(r['loss'] - r['ref_loss']) for r in rows):.2e}")
