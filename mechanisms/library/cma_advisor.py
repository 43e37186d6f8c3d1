"""Optimizer advisor: a small CMA-ES fed by every finished trial of the run.

The covariance-matrix adaptation evolution strategy (Hansen's standard (mu/mu_w, lambda)
update, as in his purecma) works in normalised knob space (each numeric knob mapped to
[0, 1], log scale for log knobs and powers of two). It starts at the incumbent with
sigma = 1/6 of each range (Optuna's default) and learns from every trial, whoever
proposed it: each `lambda` finished trials form a generation, ranked by val_bpb (crashes
last); points it did not sample itself are injected with the usual length cap, so a
far-off proposal cannot yank the distribution.

- `suggest`: the strategy's next point (its sample for this trial index);
- `context`: its state for an LLM proposer - generation, sigma, mean, the best trial so
  far and the next point - so the LLM can follow or argue with the optimizer.

Choice knobs stay at the incumbent's value (CMA-ES models numbers only). numpy only:
the mechanism runs in the sandbox image, which has numpy and no optimizer library.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mechanisms import sdk

SIGMA0 = 1.0 / 6.0
MAX_CONTEXT = 1500


class CmaAdvisor:
    def __init__(self) -> None:
        self.names: list[str] = []  # the numeric knobs, in space order
        self.mean: list[float] = []
        self.sigma = SIGMA0
        self.cov: list[list[float]] = []
        self.ps: list[float] = []
        self.pc: list[float] = []
        self.generation = 0
        self.pending: list[list[Any]] = []  # [unit point, val_bpb or None (a crash)]
        self.last_index = -1  # trials up to here are in
        self.best: dict[str, Any] | None = None  # {"index", "val_bpb"}

    # Keeping up with the run

    def _ready(self, state: Any) -> None:
        names = [k["name"] for k in state["space"]["knobs"] if k["kind"] != "choice"
                 and float(k["high"]) > float(k["low"]) and k["name"] in state["incumbent"]]
        if names == self.names:
            return
        # First call, or Level 1.5 froze/unfroze knobs: restart at the incumbent and
        # learn from the history shown (oldest first).
        table = sdk.knobs(state)
        d = len(names)
        self.names = names
        self.mean = [sdk.unit(table[n], state["incumbent"][n]) for n in names]
        self.sigma = SIGMA0
        self.cov = np.eye(d).tolist()
        self.ps, self.pc = [0.0] * d, [0.0] * d
        self.generation, self.pending, self.last_index = 0, [], -1
        for trial in state["history"]:
            self._absorb(trial, state)

    def _absorb(self, trial: Any, state: Any) -> None:
        if trial["index"] <= self.last_index or not self.names:
            return
        self.last_index = trial["index"]
        config = sdk.trial_config(state, trial)
        if any(n not in config for n in self.names):
            return
        table = sdk.knobs(state)
        value = None if trial["status"] == "crash" else trial["val_bpb"]
        if value is not None and (self.best is None or value < self.best["val_bpb"]):
            self.best = {"index": trial["index"], "val_bpb": value}
        self.pending.append([[sdk.unit(table[n], config[n]) for n in self.names], value])
        if len(self.pending) >= self._lambda():
            self._tell()

    def _lambda(self) -> int:
        return 4 + int(3 * math.log(max(len(self.names), 1)))

    def _eigen(self) -> tuple[Any, Any]:
        vals, vecs = np.linalg.eigh(np.array(self.cov))
        return vecs, np.sqrt(np.maximum(vals, 1e-20))

    def _tell(self) -> None:
        """One generation of Hansen's update from the first lambda pending points."""
        d, lam = len(self.names), self._lambda()
        mu = lam // 2
        w = np.array([math.log(mu + 0.5) - math.log(i + 1) for i in range(mu)])
        w = w / w.sum()
        mueff = 1.0 / float((w**2).sum())
        cs = (mueff + 2) / (d + mueff + 5)
        ds = 1 + 2 * max(0.0, math.sqrt((mueff - 1) / (d + 1)) - 1) + cs
        cc = (4 + mueff / d) / (d + 4 + 2 * mueff / d)
        c1 = 2 / ((d + 1.3) ** 2 + mueff)
        cmu = min(1 - c1, 2 * (mueff - 2 + 1 / mueff) / ((d + 2) ** 2 + mueff))
        chi = math.sqrt(d) * (1 - 1 / (4 * d) + 1 / (21 * d * d))
        batch, self.pending = self.pending[:lam], self.pending[lam:]
        ranked = sorted(range(lam), key=lambda i: (batch[i][1] is None, batch[i][1] or 0.0, i))
        m, cov = np.array(self.mean), np.array(self.cov)
        vecs, dev = self._eigen()
        inv_sqrt = vecs @ np.diag(1 / dev) @ vecs.T
        cap = math.sqrt(d) + 2 * d / (d + 2)  # length cap of injected points
        ys = []
        for i in ranked[:mu]:
            y = (np.array(batch[i][0]) - m) / self.sigma
            norm = float(np.linalg.norm(inv_sqrt @ y))
            ys.append(y * (cap / norm) if norm > cap else y)
        yw = sum(wi * yi for wi, yi in zip(w, ys, strict=True))
        ps = (1 - cs) * np.array(self.ps) + math.sqrt(cs * (2 - cs) * mueff) * (inv_sqrt @ yw)
        norm_ps = float(np.linalg.norm(ps))
        hsig = norm_ps / math.sqrt(1 - (1 - cs) ** (2 * (self.generation + 1))) / chi \
            < 1.4 + 2 / (d + 1)
        pc = (1 - cc) * np.array(self.pc) + hsig * math.sqrt(cc * (2 - cc) * mueff) * yw
        rank_mu = sum(wi * np.outer(yi, yi) for wi, yi in zip(w, ys, strict=True))
        cov = ((1 - c1 - cmu) * cov + c1 * (np.outer(pc, pc) + (1 - hsig) * cc * (2 - cc) * cov)
               + cmu * rank_mu)
        self.mean = np.clip(m + self.sigma * yw, 0.0, 1.0).tolist()
        self.cov = ((cov + cov.T) / 2).tolist()
        self.ps, self.pc = ps.tolist(), pc.tolist()
        self.sigma = min(max(self.sigma * math.exp((cs / ds) * (norm_ps / chi - 1)), 1e-6), 1.0)
        self.generation += 1

    # The strategy's next point

    def _ask(self, state: Any) -> dict[str, Any]:
        rng = np.random.default_rng(sdk.rng(state, "cma_advisor").getrandbits(64))
        vecs, dev = self._eigen()
        m = np.array(self.mean)
        x = m
        for _ in range(10):  # resample a point outside the box, then clip
            x = m + self.sigma * (vecs @ (dev * rng.standard_normal(len(self.names))))
            if bool(np.all((x >= 0) & (x <= 1))):
                break
        table = sdk.knobs(state)
        return {n: sdk.from_unit(table[n], float(u)) for n, u in zip(self.names, x, strict=True)}

    def suggest(self, state: Any) -> list[Any]:
        self._ready(state)
        if not self.names:
            return []
        changes = sdk.changes_from(state, self._ask(state))
        if not changes:
            return []
        return [sdk.proposal(changes, f"CMA-ES advisor: generation {self.generation}, "
                                      f"sigma {self.sigma:.3f}")]

    def context(self, state: Any) -> str:
        self._ready(state)
        if not self.names:
            return ""
        table = sdk.knobs(state)
        mean = {n: sdk.from_unit(table[n], u) for n, u in zip(self.names, self.mean, strict=True)}
        spread = [math.sqrt(max(self.cov[i][i], 0.0)) * self.sigma
                  for i in range(len(self.names))]
        wide = self.names[max(range(len(spread)), key=lambda i: spread[i])]
        narrow = self.names[min(range(len(spread)), key=lambda i: spread[i])]
        best = "none yet" if self.best is None else \
            f"val_bpb {self.best['val_bpb']:.6f} at trial {self.best['index']}"
        nxt = ", ".join(f"{k}={v!r}" for k, v in self._ask(state).items())
        text = (f"CMA-ES advisor (learns from every finished trial): generation "
                f"{self.generation}, {len(self.pending)} of {self._lambda()} results in for "
                f"the next update; step size sigma {self.sigma:.3f} of each normalised range "
                f"(started at {SIGMA0:.3f}; smaller means converging). Mean: "
                + ", ".join(f"{k}={v!r}" for k, v in mean.items())
                + f". Widest spread: {wide}; narrowest: {narrow}. Best so far: {best}. "
                f"Its next point: {nxt}.")
        return text[:MAX_CONTEXT]

    def observe(self, trial: Any, state: Any) -> None:
        self._ready(state)
        self._absorb(trial, state)

    def save_state(self) -> Any:
        return {"names": self.names, "mean": self.mean, "sigma": self.sigma, "cov": self.cov,
                "ps": self.ps, "pc": self.pc, "generation": self.generation,
                "pending": self.pending, "last_index": self.last_index, "best": self.best}

    def load_state(self, data: Any) -> None:
        self.names = [str(n) for n in data["names"]]
        self.mean = [float(v) for v in data["mean"]]
        self.sigma = float(data["sigma"])
        self.cov = [[float(v) for v in row] for row in data["cov"]]
        self.ps = [float(v) for v in data["ps"]]
        self.pc = [float(v) for v in data["pc"]]
        self.generation = int(data["generation"])
        self.pending = [[[float(v) for v in p[0]], None if p[1] is None else float(p[1])]
                        for p in data["pending"]]
        self.last_index = int(data["last_index"])
        self.best = None if data["best"] is None else {
            "index": int(data["best"]["index"]), "val_bpb": float(data["best"]["val_bpb"])}
