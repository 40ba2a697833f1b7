"""Budget sweep: the compute-optimal shape for budgets from 1e19 to 1e24 FLOPs, next to the
C = 6ND closed form of the same law.

    python examples/budget_sweep.py [--law chinchilla] [--points 6]
"""

import argparse

import numpy as np

import planner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--law", default="chinchilla")
    ap.add_argument("--points", type=int, default=6)
    args = ap.parse_args()

    budgets = np.geomspace(1e19, 1e24, args.points)
    plans = planner.frontier(budgets.tolist(), law=args.law)  # one vectorised search for all budgets
    law = plans[0].law
    print(f"{'budget':>9} {'params':>9} {'tokens':>9} {'d_model':>7} {'layers':>6} {'loss':>7}   6ND law: N, D")
    for p in plans:
        n6, d6 = law.optimal_allocation(p.budget)
        print(f"{p.budget:9.2e} {p.params:9.3g} {p.tokens:9.3g} {p.config.d_model:7d} {p.config.n_layers:6d} "
              f"{p.loss:7.4f}   {n6:.3g}, {d6:.3g}")


if __name__ == "__main__":
    main()
