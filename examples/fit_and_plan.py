"""Fit a scaling law to your own runs (a CSV of N, D or FLOPs, loss), then plan with it.

    python examples/fit_and_plan.py [runs.csv] [--budget 1e21]

Without a CSV it fits Epoch AI's extraction of Chinchilla's Figure 4, shipped with the package
(planner/data/chinchilla_fig4_epoch.csv, Besiroglu et al. 2024), dropping the 5 highest-loss runs
as Epoch did.
"""

import argparse

import planner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="?", help="default: the shipped chinchilla-epoch data set")
    ap.add_argument("--budget", type=float, default=1e21)
    args = ap.parse_args()

    if args.csv is None:
        n, d, loss = planner.load_dataset("chinchilla-epoch")
    else:
        n, d, loss = planner.load_runs_csv(args.csv)
    fit = planner.fit_scaling_law(n, d, loss, exclude_highest_loss=5 if args.csv is None else 0)
    law = fit.law
    print(f"fitted on {fit.n_points} runs: E={law.E:.4f} A={law.A:.1f} B={law.B:.1f} "
          f"alpha={law.alpha:.4f} beta={law.beta:.4f}")
    p = planner.plan(args.budget, law=law)
    c = p.config
    print(f"plan for {args.budget:.3g} FLOPs: {p.params / 1e9:.2f} B params (d_model {c.d_model}, "
          f"{c.n_layers} layers), {p.tokens / 1e9:.1f} B tokens, predicted loss {p.loss:.4f}, "
          f"{100 * p.budget_used:.2f}% of the budget")


if __name__ == "__main__":
    main()
