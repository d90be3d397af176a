"""Training-time compressors: distillation loss, Condensa's L-C, ADMM, and the HSPG optimizer.

L-C and ADMM are augmented-Lagrangian methods that need only an exact Euclidean projection
onto the op's constraint set, passed as ``project``: a function from a dict of named
tensors (the constrained parameters, detached) to a dict of their projections, such as
``{name: project_cluster(w, bits)}`` or ``{name: w * mask}``. They drive training through
two callables, so they work with any op and any data pipeline:

- ``batch_loss(model) -> Tensor``: the task loss of the next minibatch (differentiable;
  the compressor adds its penalty, back-propagates and steps);
- ``evaluate(model) -> float``: a validation loss (lower is better), for L-C's choice of
  the best compressed iterate.

:class:`HSPG` is a torch optimizer for group sparsity over conv filters (filter weights,
bias and the following BatchNorm's gamma and beta form one group), and :func:`zero_groups`
reports which filters it has zeroed; removing them physically is done elsewhere.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from operators.core.modes import train_mode

Tensors = dict[str, torch.Tensor]
Projection = Callable[[Tensors], Tensors]


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor | None,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """Hinton distillation: ``(1-alpha)*CE(s, y) + alpha*T^2*KL(softmax(t/T) || softmax(s/T))``.

    The KL term is 0 exactly when the student's and teacher's softened distributions agree,
    so with ``alpha = 1`` the loss is 0 for equal logits; with ``alpha < 1`` it is then the
    hard-label term ``(1-alpha)*CE``. ``targets=None`` drops the hard-label term. The ``T^2``
    factor keeps the soft gradients' scale independent of ``T``. Batch mean.
    """
    if temperature <= 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha: must be in [0, 1], got {alpha}")
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
    loss = alpha * temperature**2 * kl
    if targets is not None and alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student_logits, targets)
    return loss


# -- augmented-Lagrangian compressors ---------------------------------------------------------


def _named(model: nn.Module, names: Sequence[str] | None) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    if names is None:
        return params
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"names: not parameters of the model: {', '.join(missing)}")
    return {n: params[n] for n in names}


def _snapshot(params: dict[str, nn.Parameter]) -> Tensors:
    return {n: p.detach().clone() for n, p in params.items()}


def _checked_projection(project: Projection, tensors: Tensors) -> Tensors:
    out = project({n: t.detach().clone() for n, t in tensors.items()})
    if set(out) != set(tensors):
        raise ValueError("project: must return a tensor for exactly the names it was given")
    return {n: out[n].detach().to(tensors[n]) for n in tensors}


@torch.no_grad()
def _load(params: dict[str, nn.Parameter], values: Tensors) -> None:
    for n, v in values.items():
        params[n].copy_(v)


@dataclass
class PenaltySGD:
    """SGD settings for one penalised training phase (an L-step or a W-step).

    The learning rate decays geometrically from ``lr`` to ``lr_end`` over the ``steps``
    (Condensa's L-step: 0.01 -> 1e-4, momentum 0.95); ``lr_end=None`` keeps it constant.
    ``penalty="proximal"``: each step is an SGD (momentum) step on the task loss followed by
    the exact proximal step of the quadratic penalty, ``p <- (p + lr*c*target) / (1 + lr*c)``:
    stable for any penalty ``c`` (rho and mu grow to 1e4), but the momentum amplifies the
    loss's gradient and not the penalty's, so its fixed points are those of the penalty
    ``c * (1 - momentum)`` (a twentieth of ``c`` at momentum 0.95). ``penalty="gradient"``
    (Condensa's L-step): the penalty's gradient ``c * (p - target)`` joins the task gradient
    inside the (``nesterov``) momentum, so the fixed points are exactly those of the loss
    plus the penalty; where ``lr * c >= 1`` that is unstable and the step falls back to the
    proximal form.
    """

    steps: int = 100
    lr: float = 0.01
    lr_end: float | None = None
    momentum: float = 0.9
    penalty: str = "proximal"
    nesterov: bool = False

    def __post_init__(self) -> None:
        if self.penalty not in ("proximal", "gradient"):
            raise ValueError(f"penalty: must be proximal or gradient, got {self.penalty!r}")

    def run(
        self,
        model: nn.Module,
        batch_loss: Callable[[nn.Module], torch.Tensor],
        params: dict[str, nn.Parameter],
        targets: Tensors,
        coefficient: float,
    ) -> None:
        """Minimise ``batch_loss + coefficient/2 * sum ||p - target||^2``, in place. The
        optimizer and the penalty run on all tensors at once (``foreach``): on LeNet-300-100
        (bench/lc, 2 threads) a minibatch of ``lc`` took 3.4 ms with per-tensor loops, 2.3 ms
        so."""
        opt = torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad], lr=self.lr,
            momentum=self.momentum, nesterov=self.nesterov and self.momentum > 0, foreach=True,
        )  # fmt: skip
        decay = 1.0
        if self.lr_end is not None and self.steps > 1:
            decay = (self.lr_end / self.lr) ** (1 / (self.steps - 1))
        pulled = [params[n] for n in targets]
        centres = list(targets.values())
        with train_mode(model):
            for step in range(self.steps):
                lr = self.lr * decay**step
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.zero_grad(set_to_none=True)
                batch_loss(model).backward()
                with torch.no_grad():
                    if self.penalty == "gradient" and lr * coefficient < 1:
                        for p in pulled:  # a parameter the loss does not reach
                            if p.grad is None:
                                p.grad = torch.zeros_like(p)
                        pulls = torch._foreach_sub(pulled, centres)
                        torch._foreach_add_([p.grad for p in pulled], pulls, alpha=coefficient)
                        opt.step()
                        continue
                    opt.step()
                    torch._foreach_add_(pulled, centres, alpha=lr * coefficient)
                    torch._foreach_div_(pulled, 1 + lr * coefficient)


@dataclass
class LCResult:
    """What :meth:`LearningCompression.run` did: best iteration, its loss, per-iteration log."""

    best_iteration: int
    best_loss: float
    history: list[dict] = field(default_factory=list)


@dataclass
class LearningCompression:
    """Condensa's learning-compression (L-C) around any projection ``project``.

    Iteration ``j``: ``mu_j = 0`` for ``j = 0`` (direct compression, no L-step), else
    ``min(mu_init * mu_mult**(j-1), mu_cap)``. L-step: :class:`PenaltySGD` on
    ``L(w) + mu/2 ||w - theta - lambda/mu||^2``; C-step: ``theta = project(w - lambda/mu)``;
    multipliers ``lambda -= mu (w - theta)``. Each ``theta`` (with the unconstrained
    parameters as they are) is scored by ``evaluate``; :meth:`run` leaves the model at the
    best one, which satisfies the constraint exactly. ``first_l_steps`` (Condensa's
    ``mb_iterations_first_l``) sets the length of the first L-step (iteration 1), which
    recovers from the direct compression; None: ``l_step.steps`` like the others.
    """

    project: Projection
    names: Sequence[str] | None = None  # the constrained parameters (default: all)
    iterations: int = 10
    mu_init: float = 1e-3
    mu_mult: float = 1.1
    mu_cap: float = 1e4
    l_step: PenaltySGD = field(
        default_factory=lambda: PenaltySGD(lr=0.01, lr_end=1e-4, momentum=0.95)
    )
    first_l_steps: int | None = None

    def mu(self, j: int) -> float:
        """The penalty parameter of iteration ``j``."""
        return 0.0 if j == 0 else min(self.mu_init * self.mu_mult ** (j - 1), self.mu_cap)

    def run(
        self,
        model: nn.Module,
        batch_loss: Callable[[nn.Module], torch.Tensor],
        evaluate: Callable[[nn.Module], float],
        on_iteration: Callable[[int, Tensors], None] | None = None,
    ) -> LCResult:
        """Run L-C on ``model`` in place; ``on_iteration(j, theta)`` sees every C-step."""
        params = _named(model, self.names)
        multipliers = {n: torch.zeros_like(p) for n, p in params.items()}
        result = LCResult(best_iteration=-1, best_loss=math.inf)
        best_state: dict[str, torch.Tensor] = {}
        theta: Tensors = {}  # set by iteration 0, which is direct compression (mu = 0)
        for j in range(self.iterations):
            mu = self.mu(j)
            if mu:
                targets = {n: theta[n] + multipliers[n] / mu for n in params}
                l_step = self.l_step
                if j == 1 and self.first_l_steps is not None:
                    l_step = dataclasses.replace(l_step, steps=self.first_l_steps)
                l_step.run(model, batch_loss, params, targets, mu)
                w = _snapshot(params)
                theta = _checked_projection(
                    self.project, {n: w[n] - multipliers[n] / mu for n in params}
                )
                for n in params:
                    multipliers[n] -= mu * (w[n] - theta[n])
            else:
                w = _snapshot(params)
                theta = _checked_projection(self.project, w)
            if on_iteration is not None:
                on_iteration(j, theta)
            _load(params, theta)
            loss = float(evaluate(model))
            _load(params, w)
            gap = math.sqrt(sum(float(((w[n] - theta[n]) ** 2).sum()) for n in params))
            result.history.append({"iteration": j, "mu": mu, "loss": loss, "gap": gap})
            if loss < result.best_loss or result.best_iteration < 0:
                result.best_iteration, result.best_loss = j, loss
                best_state = copy.deepcopy(model.state_dict())
                best_state.update({n: theta[n].clone() for n in params})
        model.load_state_dict(best_state)
        return result


def admm_w_step(steps: int = 100, lr: float = 0.01, momentum: float = 0.9) -> PenaltySGD:
    """ADMM's W-step: SGD (momentum) with the penalty's gradient ``rho * (W - Z + U)`` inside
    the momentum (``penalty="gradient"``, as L-C's L-step), so the penalty pulls at its full
    strength and not at ``rho * (1 - momentum)`` as a proximal step after the momentum step
    would (it falls back to that step only where ``lr * rho >= 1``)."""
    return PenaltySGD(steps=steps, lr=lr, momentum=momentum, penalty="gradient")


@dataclass
class ADMMResult:
    """Per-iteration primal residuals ``||W - Z||`` and the ``rho`` used."""

    residuals: list[float] = field(default_factory=list)
    rhos: list[float] = field(default_factory=list)


@dataclass
class ADMM:
    """ADMM toward ``project``'s constraint set, then a hard projection.

    min f(W) + g(Z) s.t. W = Z, with g the constraint's indicator and scaled dual U:
    W-step :class:`PenaltySGD` on ``f(W) + rho/2 ||W - Z + U||^2``; ``Z = project(W + U)``;
    ``U += W - Z``; ``rho`` grows geometrically from ``rho_init`` to ``rho_final`` over the
    iterations (U is rescaled by ``rho_old / rho_new`` so the multiplier ``rho U`` carries
    over). The default W-step is :func:`admm_w_step` (the penalty's gradient inside the
    momentum). :meth:`run` ends with ``W = project(W)`` (then fine-tune with the structure
    held, e.g. masked, elsewhere).
    """

    project: Projection
    names: Sequence[str] | None = None
    iterations: int = 10
    rho_init: float = 1e-4
    rho_final: float = 1e-1
    w_step: PenaltySGD = field(default_factory=admm_w_step)

    def rho(self, j: int) -> float:
        """The penalty parameter of iteration ``j``."""
        if self.iterations <= 1:
            return self.rho_init
        return self.rho_init * (self.rho_final / self.rho_init) ** (j / (self.iterations - 1))

    def run(self, model: nn.Module, batch_loss: Callable[[nn.Module], torch.Tensor]) -> ADMMResult:
        """Run ADMM on ``model`` in place and leave it hard-projected."""
        params = _named(model, self.names)
        z = _checked_projection(self.project, _snapshot(params))
        u = {n: torch.zeros_like(p) for n, p in params.items()}
        result = ADMMResult()
        for j in range(self.iterations):
            rho = self.rho(j)
            if j:  # keep the unscaled multiplier rho * U unchanged when rho grows
                for n in params:
                    u[n] *= self.rho(j - 1) / rho
            self.w_step.run(model, batch_loss, params, {n: z[n] - u[n] for n in params}, rho)
            w = _snapshot(params)
            z = _checked_projection(self.project, {n: w[n] + u[n] for n in params})
            for n in params:
                u[n] += w[n] - z[n]
            residual = math.sqrt(sum(float(((w[n] - z[n]) ** 2).sum()) for n in params))
            result.residuals.append(residual)
            result.rhos.append(rho)
        _load(params, _checked_projection(self.project, _snapshot(params)))
        return result


# -- HSPG: group sparsity over conv filters ---------------------------------------------------


def filter_groups(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """``(conv name, [weight, bias?, bn.weight?, bn.bias?])`` for every ``nn.Conv2d``.

    Filter ``i`` of a conv is the group of row ``i`` of each tensor: its weights, its bias and
    the gamma/beta of the ``BatchNorm2d`` that directly follows it in module order (with
    matching ``num_features``), so that a zero group gives exactly zero output channels.
    """
    modules = list(model.named_modules())
    groups = []
    for k, (name, module) in enumerate(modules):
        if not isinstance(module, nn.Conv2d):
            continue
        params = [module.weight] + ([module.bias] if module.bias is not None else [])
        following = modules[k + 1][1] if k + 1 < len(modules) else None
        if (
            isinstance(following, nn.BatchNorm2d)
            and following.affine
            and following.num_features == module.out_channels
        ):
            params += [following.weight, following.bias]
        groups.append((name, params))
    return groups


def _row_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((t.reshape(t.shape[0], -1) ** 2).sum(dim=1) for t in tensors))


def _rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.dim() - 1)))


class HSPG(torch.optim.Optimizer):
    """Half-space projected gradient for group sparsity (Chen et al.), a drop-in optimizer.

    Param groups with ``group_sparse=True`` hold tensors sharing dim 0 (filters, see
    :func:`filter_groups`); row ``i`` of all of them is one group ``x_g``, regularised by
    ``lam * ||x_g||``. Other param groups take plain SGD steps. With ``d`` the (momentum)
    gradient of the loss:

    - phase 1 (the first ``prox_steps`` steps), prox-SG: ``y = x - lr*d``,
      ``x_g <- max(0, 1 - lr*lam/||y_g||) * y_g``;
    - phase 2, half-space step for nonzero groups: ``x^ = x - lr*(d + lam*x/||x||)``, set to 0
      when ``<x^_g, x_g> < epsilon*||x_g||^2``; zero groups stay frozen at 0.
    """

    def __init__(
        self,
        params,
        lr: float = 0.1,
        lam: float = 1e-3,
        epsilon: float = 0.0,
        prox_steps: int = 0,
        momentum: float = 0.0,
    ) -> None:
        if lr <= 0 or lam < 0 or epsilon < 0 or prox_steps < 0 or not 0 <= momentum < 1:
            raise ValueError(
                "HSPG: need lr > 0, lam >= 0, epsilon >= 0, prox_steps >= 0, 0 <= momentum < 1"
            )
        defaults = {
            "lr": lr,
            "lam": lam,
            "epsilon": epsilon,
            "prox_steps": prox_steps,
            "momentum": momentum,
            "group_sparse": False,
            "step": 0,
        }
        super().__init__(params, defaults)

    def _directions(self, group: dict) -> list[torch.Tensor]:
        out = []
        for p in group["params"]:
            d = torch.zeros_like(p) if p.grad is None else p.grad.detach()
            if group["momentum"]:
                buf = self.state[p].get("momentum")
                buf = d.clone() if buf is None else buf.mul_(group["momentum"]).add_(d)
                self.state[p]["momentum"] = buf
                d = buf
            out.append(d)
        return out

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's Optimizer signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, lr = group["params"], group["lr"]
            directions = self._directions(group)
            if not group["group_sparse"]:
                for p, d in zip(params, directions, strict=True):
                    p.sub_(lr * d)
            elif group["step"] < group["prox_steps"]:
                ys = [p - lr * d for p, d in zip(params, directions, strict=True)]
                norms = _row_norms(ys)
                factor = torch.clamp(1 - lr * group["lam"] / norms.clamp_min(1e-30), min=0)
                for p, y in zip(params, ys, strict=True):
                    p.copy_(_rows(factor, y) * y)
            else:
                norms = _row_norms(params)
                nonzero = norms > 0
                safe = norms.clamp_min(1e-30)
                steps = [
                    p - lr * (d + group["lam"] * p / _rows(safe, p))
                    for p, d in zip(params, directions, strict=True)
                ]
                dots = sum(
                    (s * p).reshape(p.shape[0], -1).sum(dim=1)
                    for s, p in zip(steps, params, strict=True)
                )
                keep = nonzero & (dots >= group["epsilon"] * norms**2)
                for p, s in zip(params, steps, strict=True):
                    p.copy_(torch.where(_rows(keep, s), s, torch.zeros_like(s)))
            group["step"] += 1
        return loss


def hspg_param_groups(model: nn.Module) -> list[dict]:
    """Param groups for :class:`HSPG`: one group-sparse group per conv filter set, the rest plain."""
    grouped = filter_groups(model)
    in_groups = {id(p) for _, params in grouped for p in params}
    rest = [p for p in model.parameters() if id(p) not in in_groups and p.requires_grad]
    groups = [{"params": params, "group_sparse": True} for _, params in grouped]
    return groups + ([{"params": rest}] if rest else [])


@torch.no_grad()
def zero_groups(model: nn.Module) -> dict[str, list[int]]:
    """For every conv (see :func:`filter_groups`), the filters whose whole group is zero."""
    return {
        name: torch.nonzero(_row_norms(params) == 0).flatten().tolist()
        for name, params in filter_groups(model)
    }
