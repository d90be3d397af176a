"""Training compressors: KD loss, L-C and ADMM on problems with known answers."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from operators.train.compressors import (
    ADMM,
    LearningCompression,
    PenaltySGD,
    admm_w_step,
    kd_loss,
)
from operators.train.finetune import LC_MU_FINAL, lc_mu_mult, lc_steps, method_params


def soft_targets_kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """KL(softmax(teacher/t) || softmax(student/t)), batch mean, written out by hand."""
    p = torch.softmax(teacher / t, dim=1)
    return (p * (torch.log(p) - torch.log_softmax(student / t, dim=1))).sum(1).mean()


def test_kd_loss_is_the_hinton_formula():
    g = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(16, 10, generator=g), torch.randn(16, 10, generator=g) * 3
    targets = torch.randint(0, 10, (16,), generator=g)
    for t, alpha in [(1.0, 0.5), (3.0, 0.9), (4.0, 1.0), (2.0, 0.0)]:
        expected = alpha * t**2 * soft_targets_kl(student, teacher, t) + (
            1 - alpha
        ) * F.cross_entropy(student, targets)
        torch.testing.assert_close(kd_loss(student, teacher, targets, t, alpha), expected)
    torch.testing.assert_close(  # without targets only the soft term is left
        kd_loss(student, teacher, None, 2.0, 0.7), 0.7 * 4 * soft_targets_kl(student, teacher, 2.0)
    )


def test_kd_loss_zero_when_student_equals_teacher_and_alpha_one():
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 10, (16,))
    assert float(kd_loss(logits, logits.clone(), targets, 4.0, 1.0)) == pytest.approx(0, abs=1e-6)
    other = logits.flip(1)  # another teacher: the same student now has something to learn
    assert float(kd_loss(logits, other, targets, 4.0, 1.0)) > 0.1


def test_kd_loss_is_the_scaled_hard_label_term_when_logits_agree():
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, 10, (16,))
    expected = 0.3 * F.cross_entropy(logits, targets)
    assert torch.allclose(kd_loss(logits, logits, targets, 2.0, 0.7), expected, atol=1e-6)


def test_kd_soft_gradient_pulls_the_student_to_the_teacher():
    g = torch.Generator().manual_seed(2)
    student = torch.randn(8, 5, generator=g, requires_grad=True)
    teacher = torch.randn(8, 5, generator=g, requires_grad=True)
    t = 4.0
    kd_loss(student, teacher, None, t, 1.0).backward()
    # d/ds T^2 KL(p_t || p_s) = T (p_s - p_t) / N: toward the teacher's softened distribution
    expected = t * (torch.softmax(student / t, 1) - torch.softmax(teacher / t, 1)) / 8
    torch.testing.assert_close(student.grad, expected.detach())
    assert teacher.grad is None  # the teacher is a fixed target
    with torch.no_grad():
        stepped = student - 0.5 * student.grad
    assert soft_targets_kl(stepped, teacher, t) < soft_targets_kl(student, teacher, t)


def test_kd_loss_refuses_bad_arguments():
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="temperature: must be > 0"):
        kd_loss(logits, logits, None, 0.0)
    with pytest.raises(ValueError, match=r"alpha: must be in \[0, 1\]"):
        kd_loss(logits, logits, None, 1.0, 1.5)


class Vector(nn.Module):
    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(values.clone())

    def forward(self) -> torch.Tensor:
        return self.w


def quadratic(w0: torch.Tensor):
    return lambda model: 0.5 * ((model.w - w0) ** 2).sum()


def top_k(k: int):
    def project(tensors):
        w = tensors["w"]
        out = torch.zeros_like(w)
        idx = w.abs().topk(k).indices
        out[idx] = w[idx]
        return {"w": out}

    return project


W0 = torch.tensor([3.0, -0.5, 0.2, -2.5, 1.0, 0.1, -1.5, 0.05])


def test_lc_with_identity_projection_returns_its_input():
    model = Vector(W0)
    loss = quadratic(W0)  # the input is the minimiser: nothing moves it
    result = LearningCompression(
        project=lambda t: t, iterations=5, l_step=PenaltySGD(steps=10)
    ).run(model, loss, lambda m: float(loss(m).detach()))
    assert torch.equal(model.w.detach(), W0) and len(result.history) == 5


def test_lc_first_iteration_is_direct_compression():
    model = Vector(W0)
    target = torch.zeros_like(W0)  # a loss that would move w if an L-step ran
    lc = LearningCompression(project=lambda t: t, iterations=1)
    lc.run(model, quadratic(target), lambda m: 0.0)
    assert lc.mu(0) == 0 and torch.equal(model.w.detach(), W0)


TOP3 = top_k(3)({"w": W0})["w"]  # the answer: the minimiser of the quadratic, projected


def inner_steps() -> PenaltySGD:
    return PenaltySGD(steps=50, lr=0.05, momentum=0.9)


def test_lc_with_top_k_converges_to_top_k_of_the_minimiser():
    model = Vector(W0 * 0.3)  # start away from w0
    thetas = []
    lc = LearningCompression(
        project=top_k(3), iterations=30, mu_init=0.05, mu_mult=1.4, l_step=inner_steps()
    )
    loss = quadratic(W0)
    result = lc.run(
        model, loss, lambda m: float(loss(m).detach()), lambda j, t: thetas.append(t["w"])
    )
    assert all(int((t != 0).sum()) <= 3 for t in thetas)  # feasible at every iteration
    assert torch.allclose(thetas[-1], TOP3, atol=1e-2)
    assert torch.allclose(model.w.detach(), TOP3, atol=1e-2)
    assert result.history[-1]["gap"] < 1e-2  # w itself converged onto the constraint set


@pytest.mark.parametrize(
    "w_step", [inner_steps(), admm_w_step(steps=50, lr=0.05)], ids=["proximal", "gradient"]
)
def test_admm_residual_goes_to_zero_on_a_toy_quadratic(w_step: PenaltySGD):
    model = Vector(W0)
    admm = ADMM(project=top_k(3), iterations=30, rho_init=0.1, rho_final=100.0, w_step=w_step)
    result = admm.run(model, quadratic(W0))
    assert result.residuals[-1] < 1e-3 * max(result.residuals)
    assert int((model.w != 0).sum()) <= 3  # hard-projected at the end
    assert torch.allclose(model.w.detach(), TOP3, atol=1e-2)


def recording(project, calls: list):
    """``project``, writing down every tensor it is given (ADMM's W + U after each W-step)."""

    def record(tensors):
        calls.append(tensors["w"].clone())
        return project(tensors)

    return record


def no_loss(model):
    return (model.w * 0).sum()  # only the penalty moves w


def test_admm_w_step_pulls_with_the_full_penalty_gradient():
    # one W-step of one SGD step per iteration, at the default momentum: w moves by exactly
    # lr * rho * (w - z + u), the dual u included (a proximal step would pull 1/(1 + lr rho) of it)
    calls, lr, rho0, rho1 = [], 0.25, 1.0, 2.0
    ADMM(project=recording(top_k(3), calls), iterations=2, rho_init=rho0, rho_final=rho1,
         w_step=admm_w_step(steps=1, lr=lr)).run(Vector(W0), no_loss)  # fmt: skip
    z0 = TOP3
    w1 = W0 - lr * rho0 * (W0 - z0)
    torch.testing.assert_close(calls[1], w1)  # W + U with U = 0
    z1 = top_k(3)({"w": w1})["w"]
    u = (w1 - z1) * rho0 / rho1  # U += W - Z, rescaled as rho grows
    w2 = w1 - lr * rho1 * (w1 - z1 + u)
    torch.testing.assert_close(calls[2], w2 + u)
    torch.testing.assert_close(calls[3], w2)  # the final hard projection is given W


def test_admm_w_step_settles_where_loss_plus_the_full_penalty_is_least():
    # f = 1/2 ||w - w0||^2 plus rho/2 ||w - z||^2 is least at (w0 + rho z) / (1 + rho); the
    # proximal step after the momentum step settled at rho (1 - momentum) instead
    calls, rho = [], 1.0
    ADMM(project=recording(top_k(3), calls), iterations=1, rho_init=rho,
         w_step=admm_w_step(steps=400, lr=0.05)).run(Vector(W0), quadratic(W0))  # fmt: skip
    assert admm_w_step().momentum == 0.9 == ADMM(project=top_k(3)).w_step.momentum
    torch.testing.assert_close(calls[1], (W0 + rho * TOP3) / (1 + rho), atol=1e-5, rtol=0)
    weakened = rho * (1 - 0.9)
    assert not torch.allclose(calls[1], (W0 + weakened * TOP3) / (1 + weakened), atol=1e-2)


def test_projection_must_cover_the_same_names():
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="project"):
        LearningCompression(project=lambda t: {}).run(model, lambda m: 0, lambda m: 0.0)


def test_gradient_penalty_is_condensas_step_and_lands_on_the_same_minimiser():
    # one step by hand: Nesterov momentum on grad(loss) + c * (w - target), from zero velocity
    target, c, lr, m = torch.zeros_like(W0), 2.0, 0.05, 0.9
    model = Vector(W0.clone())
    PenaltySGD(steps=1, lr=lr, momentum=m, penalty="gradient", nesterov=True).run(
        model, quadratic(W0 * 0.5), {"w": model.w}, {"w": target}, c
    )
    d = (W0 - W0 * 0.5) + c * (W0 - target)  # quadratic's gradient is w - w0
    assert torch.allclose(model.w.detach(), W0 - lr * (d + m * d))
    # the gradient form minimises loss + c/2 ||w - target||^2, at (w0 + c target) / (1 + c);
    # the proximal step after a momentum step weakens the penalty to c (1 - momentum)
    for penalty, effective in (("gradient", c), ("proximal", c * (1 - m))):
        model = Vector(W0.clone())
        PenaltySGD(steps=400, lr=0.05, momentum=m, penalty=penalty).run(
            model, quadratic(W0), {"w": model.w}, {"w": target}, c
        )
        assert torch.allclose(model.w.detach(), W0 / (1 + effective), atol=1e-4), penalty


def test_gradient_penalty_falls_back_to_the_proximal_step_where_it_would_diverge():
    model = Vector(W0.clone())
    PenaltySGD(steps=50, lr=0.5, momentum=0.9, penalty="gradient").run(
        model, quadratic(W0), {"w": model.w}, {"w": torch.zeros_like(W0)}, 1e4
    )
    assert torch.isfinite(model.w).all() and model.w.abs().max() < 1e-2


def test_lc_first_l_step_has_its_own_length():
    steps = []

    def counting(m):
        steps.append(1)
        return quadratic(W0)(m)

    LearningCompression(project=top_k(3), iterations=4, l_step=PenaltySGD(steps=5),
                        first_l_steps=20).run(Vector(W0), counting, lambda m: 0.0)  # fmt: skip
    assert len(steps) == 20 + 5 + 5


def test_bad_penalty_form_is_refused():
    with pytest.raises(ValueError, match="penalty: must be proximal or gradient"):
        PenaltySGD(penalty="lagrange")


def test_lc_steps_give_the_first_l_step_condensas_share_of_the_budget():
    first, per_step = lc_steps(66_000, 30)
    assert first == 29_700 and per_step == (66_000 - 29_700) // 28
    assert first + 28 * per_step <= 66_000
    assert lc_steps(500, 2) == (500, 500)  # one L-step takes everything
    assert lc_steps(3, 10) == (1, 1)  # never an empty L-step


def test_lc_default_mu_schedule_reaches_the_final_mu_at_the_last_iteration():
    assert method_params("lc", {}) == {"iterations": 10, "mu_init": 1e-2, "mu_mult": None}
    for n in (3, 10, 30):
        lc = LearningCompression(project=top_k(3), iterations=n, mu_init=1e-2,
                                 mu_mult=lc_mu_mult(1e-2, n))  # fmt: skip
        assert lc.mu(n - 1) == pytest.approx(LC_MU_FINAL) and lc.mu(1) == 1e-2
    assert lc_mu_mult(1e-2, 30) == pytest.approx(1.2, abs=0.01)  # the schedule measured best
    assert lc_mu_mult(5.0, 10) == 1.0 and lc_mu_mult(1e-2, 2) == 1.0
    with pytest.raises(ValueError, match="mu_mult: must be >= 1"):
        method_params("lc", {"mu_mult": 0.5})
