"""PNG figures for the CLI's ``--plot`` (matplotlib, the optional ``plot`` extra)."""

from __future__ import annotations

import numpy as np


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'scaling-planner[plot]'") from None
    return plt


def frontier_figure(plans, path: str) -> None:
    """N and D of each plan against the budget, with the C = 6ND closed form of the same law;
    and isoFLOP curves of the law (loss against N at fixed C, D = C / 6N)."""
    plt = _pyplot()
    law = plans[0].law
    c = np.array([p.budget for p in plans])
    n6, d6 = (np.asarray(v, float) for v in law.optimal_allocation(c))
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    ax[0].loglog(c, [p.params for p in plans], "o-", label="N, planned shape")
    ax[0].loglog(c, [p.tokens for p in plans], "s-", label="D, planned tokens")
    ax[0].loglog(c, n6, "--", label="N_opt, C = 6ND closed form")
    ax[0].loglog(c, d6, ":", label="D_opt, C = 6ND closed form")
    ax[0].set_xlabel("compute budget C (FLOP)")
    ax[0].set_title(f"compute-optimal frontier ({plans[0].convention} FLOPs)")
    ax[0].legend(fontsize=8)
    for p in plans[:: max(1, len(plans) // 5)]:
        ns = np.geomspace(p.params / 30, p.params * 30, 80)
        ax[1].semilogx(ns, [float(law.loss(n, p.budget / (6 * n))) for n in ns], label=f"C = {p.budget:.0e}")
        ax[1].plot([p.params], [p.loss], "k.")
    ax[1].set_xlabel("parameters N (D = C / 6N)")
    ax[1].set_ylabel("predicted loss")
    ax[1].set_title("isoFLOP curves (dots: the plans)")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def roofline_figure(step, path: str, title: str) -> None:
    """Time of each component of a step, split by its bound (compute or memory)."""
    plt = _pyplot()
    names = [k for k, c in step.components.items() if c.time > 0]
    times = np.array([step.components[k].time for k in names]) * 1e3
    colors = ["tab:blue" if step.components[k].bound == "compute" else "tab:orange" for k in names]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(names) + 1.8))
    ax.barh(names[::-1], times[::-1], color=colors[::-1])
    ax.set_xlabel("ms per step (roofline)")
    ax.set_title(f"{title}\nstep {step.step_time * 1e3:.1f} ms (all-reduce {step.comm_time * 1e3:.1f} ms), "
                 f"MFU {100 * step.mfu:.1f}%; blue: compute-bound, orange: memory-bound", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def isoflop_figure(plan, path: str) -> None:
    """The law's loss against N at this plan's budget (D = C / 6N), with the plan marked."""
    plt = _pyplot()
    law = plan.law
    c = 6.0 * plan.params * plan.tokens
    ns = np.geomspace(plan.params / 30, plan.params * 30, 100)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogx(ns, [float(law.loss(n, c / (6 * n))) for n in ns], label=f"isoFLOP C = 6ND = {c:.2e}")
    ax.plot([plan.params], [plan.loss], "ro", label=f"plan: {plan.params / 1e9:.2f} B params")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("predicted loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
