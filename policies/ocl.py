"""The deferral policy of "Online Cascade Learning" (Nie et al., ICML 2024).

Per level, an MLP over the level's sorted class probabilities (plus optional named extra
features, e.g. agreement with earlier levels) outputs d, the probability of deferring; the
level defers when d > 0.5 (or, with ``target_agreement``, when d passes the operating point).
Trained online from each demonstration with

- calibration: MSE(d_j, min(1[pred_j != y] + c_j, 1)) + 1e-4 ||theta||^2, c biases to defer;
- cascade cost: C_j = (1 - d_j) CE(p_j, y) + d_j mu cost_{j+1}, and the whole chain's loss
  C_1 + sum_j C_j prod_{k<j} d_k, so each policy learns what deferring costs downstream.

``ocl_update`` takes one demonstration through a task's chain of OCL policies jointly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from policies.base import Decision, Features, Policy, PolicyError, check_number, register

torch.set_num_threads(1)  # tiny MLPs: threads cost more than they save


class _MLP(torch.nn.Module):
    def __init__(self, n_in: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(n_in, hidden)
        self.fc2 = torch.nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(x)))).squeeze(-1)


@register("ocl")
class OCLPolicy(Policy):
    settable = ("mu", "c")
    counts_traffic = False  # the paper's k: demonstrations learned from

    def __init__(
        self,
        mu: float = 0.01,
        c: float = 0.1,
        hidden: int = 128,
        lr: float = 7e-4,
        beta: float = 0.99,
        explore_floor: float = 0.02,
        warmup: int = 10,
        extras: list[str] | None = None,
        target_agreement: float | None = None,
        seed: int = 0,
    ) -> None:
        self.mu, self.c = self.check_param("mu", mu), self.check_param("c", c)
        self.hidden, self.lr = int(hidden), float(lr)
        self.warmup = int(warmup)  # defer the first items outright (not the explorer's warm-up)
        self.extras = list(extras or [])
        super().__init__(target_agreement, beta, explore_floor)
        self._seed = seed
        self.net: _MLP | None = None
        self.opt: torch.optim.Optimizer | None = None

    @property
    def learned(self) -> bool:
        return True  # the MLP learns from every demonstration

    def check_param(self, name: str, value: float) -> float:
        v = check_number(name, value)
        if name == "mu" and v < 0:
            raise PolicyError(f"mu must be a finite number >= 0, got {value!r}")
        if name == "c" and not 0.0 <= v < 0.5:
            raise PolicyError(f"c must be in [0, 0.5), got {value!r}")
        return v

    # ------------------------------------------------------------------ features

    def vector(self, f: Features) -> np.ndarray:
        if f.probs is None:
            raise PolicyError("the ocl policy needs class probabilities (classify tasks)")
        probs = np.sort(np.asarray(f.probs, dtype=np.float32))[::-1]
        extra = [float(f.extra.get(name, 0.0)) for name in self.extras]
        return np.concatenate([probs, np.asarray(extra, dtype=np.float32)])

    def _ensure(self, n_in: int) -> _MLP:
        if self.net is None:
            torch.manual_seed(self._seed)
            self.net = _MLP(n_in, self.hidden)
            self.opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        return self.net

    def d(self, f: Features) -> float:
        """The MLP's deferral probability."""
        x = self.vector(f)
        net = self._ensure(len(x))
        with torch.no_grad():
            return float(net(torch.from_numpy(x)[None])[0])

    def d_batch(self, x: np.ndarray) -> np.ndarray:
        net = self._ensure(x.shape[1])
        with torch.no_grad():
            return net(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()

    # ------------------------------------------------------------------ decisions

    def score(self, features: Features) -> float:
        return self.d(features)

    def decide(self, features: Features) -> Decision:
        d = self.d(features)
        if self.explorer.seen < self.warmup:
            defer = True  # warm-up: the policy has not learned enough to answer
        elif self.op is not None:
            defer = d >= self.op.threshold
        else:
            defer = d > 0.5
        return Decision(defer=defer, score=d)

    # explored items only reach the operating point (``Policy.update``; the gradient step is
    # ``ocl_update``, joint): the window is re-scored by an MLP that keeps learning, and a
    # deferral was chosen on the score at the time, so P(agree | today's score) among
    # deferrals would not be that of the traffic (ThresholdPolicy's score never moves)

    def inputs(self, features: Features) -> np.ndarray:
        return self.vector(features)

    def score_batch(self, x: np.ndarray) -> np.ndarray:
        return self.d_batch(x)

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, np.ndarray]:
        out = super().state()
        if self.net is not None:
            for k, v in self.net.state_dict().items():
                out[f"net.{k}"] = v.detach().numpy().copy()
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        weights = {
            k[4:]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("net.")
        }
        if weights:
            net = self._ensure(int(weights["fc1.weight"].shape[1]))
            net.load_state_dict(weights)
        super().load_state(arrays)  # last: the operating point rescores with these weights


@dataclass
class OCLStep:
    """One level of a demonstration, for ``ocl_update``: its policy, its features (None when
    the level had no answer), the cost of the next level, its class distribution and the
    index of the expert's label in it."""

    policy: OCLPolicy
    features: Features | None
    next_cost: float
    probs: np.ndarray | None = None
    label: int | None = None


def ocl_update(chain: list[OCLStep], steps: int = 1) -> float:
    """Joint gradient step(s) of a task's OCL policies on one demonstration; returns the loss."""
    loss_value = 0.0
    for _ in range(steps):
        used: list[OCLPolicy] = []
        loss = torch.zeros(())
        reach = torch.ones(())  # prod_{k<j} d_k
        for st in chain:
            if st.features is None or st.probs is None or st.label is None:
                continue  # the level said nothing: it deferred with certainty
            pol = st.policy
            x = torch.from_numpy(pol.vector(st.features))[None]
            net = pol._ensure(x.shape[1])
            used.append(pol)
            d = net(x)[0]
            p = torch.from_numpy(np.asarray(st.probs, dtype=np.float32))
            wrong = float(int(np.argmax(st.probs)) != st.label)
            ce = -torch.log(p[st.label].clamp_min(1e-6))
            calib = (d - min(wrong + pol.c, 1.0)) ** 2
            reg = 1e-4 * sum((w**2).sum() for w in net.parameters())
            cost_j = (1 - d) * ce + d * pol.mu * st.next_cost
            loss = loss + calib + reg + reach * cost_j
            reach = reach * d
        if not used:
            return 0.0
        for pol in used:
            assert pol.opt is not None
            pol.opt.zero_grad()
        loss.backward()
        for pol in used:
            assert pol.opt is not None
            pol.opt.step()
        loss_value = float(loss.detach())
    return loss_value
