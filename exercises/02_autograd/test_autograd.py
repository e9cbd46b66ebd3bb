"""Exercise 02: autograd, gradients by hand, and gradient descent without an optimizer.

Each test checks one property. Read the failure message first: it says what was expected,
what the code did instead, and why it matters.
"""

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn import functional as F

from torchkata import data, under_test
from torchkata.checks import (
    assert_accuracy_at_least,
    assert_finite,
    assert_help_opens_with_summary,
    assert_not_started_under_another_name,
    call,
    fail,
    run_as_main,
)

grads = under_test("grads")
linreg = under_test("linreg")
logreg = under_test("logreg")

LEAF_HINT = (
    "Autograd fills .grad only for leaf tensors that require grad: the tensors you created "
    "with requires_grad=True. After an update, are w and b still those tensors?"
)
UPDATE_HINT = (
    "An update of the parameters is not part of the model: autograd must not record it, and "
    "it must not replace the parameter tensors with new ones."
)


def seeded(*shape: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def direction(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine between two gradients, flattened (1: same direction, -1: opposite)."""
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


# --- gradients by hand -----------------------------------------------------------------


@given(n=st.integers(1, 20), d=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_hand_written_mse_gradients_match_autograd(device, n, d, seed):
    """linear_mse_grads returns exactly what backward() computes for the mean squared error."""
    x, y = seeded(n, d, seed=seed).to(device), seeded(n, seed=seed + 1).to(device)
    w = seeded(d, seed=seed + 2).to(device).requires_grad_()
    b = seeded(1, seed=seed + 3)[0].to(device).requires_grad_()
    ((x @ w + b - y) ** 2).mean().backward()
    with torch.no_grad():
        grad_w, grad_b = call(grads.linear_mse_grads, x, y, w, b,
                              what=f"linear_mse_grads on x {(n, d)}")
    for name, mine, auto in (("dL/dw", grad_w, w.grad), ("dL/db", grad_b, b.grad)):
        mine = torch.as_tensor(mine).cpu().double()
        assert_finite(mine, f"The hand-written {name}")
        if mine.shape != auto.shape:
            fail(f"linear_mse_grads returned {name} of shape {tuple(mine.shape)}; the gradient "
                 f"of a loss with respect to a parameter has the parameter's shape, "
                 f"{tuple(auto.shape)}.")
        auto = auto.cpu()
        if not torch.allclose(mine, auto, rtol=1e-9, atol=1e-9):
            if auto.norm() > 1e-9 and direction(mine, auto) < -0.999:
                fail(f"The hand-written {name} points exactly the opposite way from autograd's "
                     f"(same size, cosine -1): a sign error. Gradient descent with it climbs "
                     f"the loss instead of descending. Redo the chain rule for "
                     f"(prediction - target)^2 step by step.")
            fail(f"The hand-written {name} differs from autograd's by up to "
                 f"{(mine - auto).abs().max().item():.3g} for x {(n, d)}. Autograd is the "
                 f"oracle: derive the gradient again, factor by factor.")


def test_custom_sigmoid_forward_matches_torch(device):
    """Sigmoid.apply(z) equals torch.sigmoid(z), without NaN even for z = -1000 or +1000."""
    z = torch.tensor([-1000.0, -30.0, -1.0, 0.0, 0.5, 30.0, 1000.0], device=device)
    got = call(grads.Sigmoid.apply, z, what="Sigmoid.apply (the custom autograd Function)")
    assert_finite(got, f"sigmoid({z.tolist()})")
    if not torch.allclose(got.cpu(), torch.sigmoid(z).cpu(), atol=1e-7):
        fail(f"sigmoid({z.tolist()}) returned {got.tolist()}, expected "
             f"{torch.sigmoid(z).tolist()}.")


def test_custom_sigmoid_backward_passes_gradcheck(device):
    """gradcheck in float64: the hand-written backward agrees with finite differences."""
    z = seeded(6, seed=0).mul(3).to(device).requires_grad_()
    passed = call(torch.autograd.gradcheck, grads.Sigmoid.apply, (z,), eps=1e-6, atol=1e-6,
                  raise_exception=False, what="torch.autograd.gradcheck(sigmoid, z)",
                  why="Sigmoid.backward must return one gradient per input of forward, "
                      "shaped like that input.")
    if passed:
        return
    weights = torch.arange(1.0, 7.0, dtype=torch.float64, device=device)
    (grads.Sigmoid.apply(z) * weights).sum().backward()
    mine = z.grad.cpu()
    z2 = z.detach().clone().requires_grad_()
    (torch.sigmoid(z2) * weights).sum().backward()
    fail(f"gradcheck: Sigmoid.backward disagrees with finite differences. For the loss "
         f"sum(sigmoid(z) * [1, 2, ..., 6]) it gives dL/dz = "
         f"{[round(v, 4) for v in mine.tolist()]}, but the true gradient is "
         f"{[round(v, 4) for v in z2.grad.cpu().tolist()]}. backward receives dL/ds, the "
         f"gradient of the final loss with respect to this operation's output, and must "
         f"return dL/dz: the chain rule connects the two. A backward that ignores what it "
         f"receives is right only when the loss is a plain sum of the outputs.")


# --- linear regression by gradient descent ---------------------------------------------


def known_line(device, noise: float = 0.01):
    w_true, b_true = torch.tensor([2.0, -3.0, 0.5]), 1.0
    x = seeded(200, 3, seed=0, dtype=torch.float32)
    y = x @ w_true + b_true + noise * seeded(200, seed=1, dtype=torch.float32)
    return x.to(device), y.to(device), w_true, b_true


def linear_gd_oracle(x, y, lr, steps):
    """Plain gradient descent on the mean squared error in float64, gradient by hand.

    Returns w, b after ``steps`` steps and the loss before each step.
    """
    x, y = x.double().cpu(), y.double().cpu()
    w, b = torch.zeros(x.shape[1], dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    losses = []
    for _ in range(steps):
        residual = x @ w + b - y  # (N,)
        losses.append(residual.pow(2).mean().item())
        w, b = w - lr * 2 * x.T @ residual / len(x), b - lr * 2 * residual.mean()
    return w, b, losses


def test_make_data_is_the_documented_line_plus_noise():
    """make_data() gives x (200, 3) and y = x @ [2, -3, 0.5] + 1 + noise of size 0.1, seeded."""
    x, y = call(linreg.make_data, what="make_data()")
    if tuple(x.shape) != (200, 3) or tuple(y.shape) != (200,):
        fail(f"make_data() returned x {tuple(x.shape)} and y {tuple(y.shape)}; its defaults "
             f"promise n = 200 points with 3 features: x (200, 3), y (200,).")
    residual = y - x @ torch.tensor([2.0, -3.0, 0.5]) - 1.0  # the noise alone
    if not (residual.mean().abs() < 0.05 and 0.07 < residual.std() < 0.13):
        fail(f"In make_data(), y - (x @ [2, -3, 0.5] + 1) has mean {residual.mean():.3f} and "
             f"standard deviation {residual.std():.3f}; it should be the noise alone, mean "
             f"about 0 and standard deviation about 0.1. Otherwise the 'true' weights the fit "
             f"is judged against are not the ones in the data.")
    x2, y2 = call(linreg.make_data, n=5, w_true=(1.0, -1.0), b_true=-2.0, noise=0.0, seed=3,
                  what="make_data(n=5, w_true=(1, -1), b_true=-2, noise=0, seed=3)")
    if tuple(x2.shape) != (5, 2) or not torch.allclose(y2, x2 @ torch.tensor([1.0, -1.0]) - 2):
        fail("make_data(n=5, w_true=(1, -1), b_true=-2, noise=0) should give x (5, 2) and, "
             "without noise, exactly y = x @ [1, -1] - 2: every argument must reach the data.")
    again = call(linreg.make_data, seed=0, what="make_data(seed=0)")
    if not torch.equal(again[1], y):
        fail("make_data() and make_data(seed=0) gave different data: the default seed is 0, "
             "so that every run of linreg.py fits the same points.")


def test_make_data_draws_the_points_the_readme_describes():
    """make_data(..., seed): x, then the noise, from one generator seeded seed (README)."""
    for seed, w_true in ((0, (2.0, -3.0, 0.5)), (5, (1.0, -1.0))):
        x, y = call(linreg.make_data, n=7, w_true=w_true, b_true=1.0, noise=0.1, seed=seed,
                    what=f"make_data(n=7, w_true={w_true}, b_true=1, noise=0.1, seed={seed})")
        g = torch.Generator().manual_seed(seed)
        x_draw = torch.randn(7, len(w_true), generator=g)  # (7, d)
        e = torch.randn(7, generator=g)  # (7,)
        y_draw = x_draw @ torch.tensor(w_true) + 1.0 + 0.1 * e  # (7,)
        if tuple(x.shape) != tuple(x_draw.shape) or tuple(y.shape) != tuple(y_draw.shape):
            fail(f"make_data(n=7, seed={seed}) returned x {tuple(x.shape)} and y "
                 f"{tuple(y.shape)}; expected x {tuple(x_draw.shape)} and y (7,).")
        diff = max((x - x_draw).abs().max().item(), (y - y_draw).abs().max().item())
        if diff > 1e-5:
            fail(f"make_data(n=7, w_true={w_true}, b_true=1, noise=0.1, seed={seed}) differs by "
                 f"up to {diff:.3f} from the README's draw (from a torch.Generator seeded "
                 f"{seed}: x = torch.randn(n, d), then e = torch.randn(n), and y = x @ w_true + "
                 f"b_true + noise * e). Expected the documented data: a seed names one data "
                 f"set, so that a run can be repeated and compared with another.")


def test_fit_linear_is_plain_gradient_descent(device):
    """With lr=0.05, after 1 and after 3 steps, w and b equal those of w <- w - lr * dL/dw."""
    x, y, _, _ = known_line(device)
    for steps in (1, 3):
        w, b, _ = call(linreg.fit_linear, x, y, lr=0.05, steps=steps,
                       what=f"fit_linear(x (200, 3), y, lr=0.05, steps={steps})", why=LEAF_HINT)
        assert_finite(torch.as_tensor(w), f"w from fit_linear(steps={steps})")
        w_ok, b_ok, _ = linear_gd_oracle(x, y, 0.05, steps)
        if not (torch.allclose(w.detach().cpu().double(), w_ok, atol=1e-5)
                and abs(b.item() - b_ok.item()) < 1e-5):
            fail(f"After {steps} step(s) of fit_linear(lr=0.05) from w = 0, b = 0, the weights "
                 f"are w = {[round(v, 4) for v in w.tolist()]}, b = {b.item():.4f}; {steps} "
                 f"step(s) of gradient descent on the mean squared error give "
                 f"{[round(v, 4) for v in w_ok.tolist()]}, {b_ok.item():.4f}. Each step must "
                 f"move w and b by lr (the lr it is given) times their gradient, against it.")


@pytest.mark.requires("test_fit_linear_is_plain_gradient_descent")
def test_fit_linear_reports_the_loss_before_each_step(device):
    """steps=4 gives 4 losses: the mean squared error before each update, as Python floats."""
    x, y, _, _ = known_line(device)
    _, _, losses = call(linreg.fit_linear, x, y, lr=0.05, steps=4,
                        what="fit_linear(x (200, 3), y, lr=0.05, steps=4)", why=LEAF_HINT)
    expected = linear_gd_oracle(x, y, 0.05, 4)[2]
    if len(losses) != 4:
        fail(f"fit_linear(steps=4) returned {len(losses)} losses; expected 4, one per step.")
    assert_finite(torch.tensor([float(v) for v in losses]), "The losses fit_linear returned")
    for k, (got, want) in enumerate(zip(losses, expected)):
        if abs(float(got) - want) > 1e-4 * max(1.0, want):
            fail(f"fit_linear reported {float(got):.4f} as the loss of step {k + 1}; the mean "
                 f"squared error of w and b before that step is {want:.4f}"
                 + (" (with w = 0 and b = 0, it is mean(y^2))" if k == 0 else "") + ". The "
                 "losses must be the ones being minimised, taken before each update.")


@pytest.mark.requires("test_fit_linear_reports_the_loss_before_each_step")
def test_fit_linear_defaults_to_lr_0_1_and_200_steps(device):
    """fit_linear(x, y) without lr or steps takes 200 steps of size lr = 0.1."""
    x, y, _, _ = known_line(device)
    _, _, losses = call(linreg.fit_linear, x, y, what="fit_linear(x (200, 3), y)", why=LEAF_HINT)
    if len(losses) != 200:
        fail(f"fit_linear(x, y) returned {len(losses)} losses; by default it takes 200 steps.")
    expected = linear_gd_oracle(x, y, 0.1, 2)[2]
    if abs(float(losses[1]) - expected[1]) > 1e-4 * max(1.0, expected[1]):
        fail(f"After one default step, fit_linear(x, y) reports a loss of {float(losses[1]):.4f}; "
             f"one step of gradient descent with the default lr = 0.1 gives "
             f"{expected[1]:.4f}. Callers that leave lr out rely on the documented default.")


@pytest.mark.requires("test_fit_linear_is_plain_gradient_descent")
def test_fit_linear_recovers_known_weights(device):
    """On y = x @ [2, -3, 0.5] + 1 + small noise, gradient descent finds those numbers."""
    x, y, w_true, b_true = known_line(device)
    w, b, losses = call(linreg.fit_linear, x, y, lr=0.1, steps=200,
                        what="fit_linear(x (200, 3), y, lr=0.1, steps=200)", why=LEAF_HINT)
    assert_finite(torch.cat([torch.as_tensor(w).flatten().cpu(), b.reshape(1).cpu()]),
                  "w and b from fit_linear")
    error = max((w.cpu() - w_true).abs().max().item(), abs(b.item() - b_true))
    if error > 0.02:
        fail(f"fit_linear found w = {[round(v, 3) for v in w.tolist()]}, b = {b.item():.3f}; "
             f"the data were made with w = [2, -3, 0.5], b = 1 (loss {losses[0]:.3f} -> "
             f"{losses[-1]:.3f}). Each step must move w and b against their gradient.")


def test_fit_linear_returns_plain_tensors(device):
    """The fitted w and b carry no autograd history; the losses are Python floats."""
    x, y, _, _ = known_line(device)
    w, b, losses = call(linreg.fit_linear, x, y, lr=0.1, steps=3,
                        what="fit_linear(x (200, 3), y, lr=0.1, steps=3)", why=LEAF_HINT)
    for name, t in (("w", w), ("b", b)):
        if t.requires_grad:
            fail(f"fit_linear returned {name} with requires_grad=True. Trained parameters "
                 f"handed to other code should be cut out of the graph: otherwise every use "
                 f"records new graph nodes, and .numpy() refuses them.")
    if not all(isinstance(v, float) for v in losses):
        fail("fit_linear's losses are not all Python floats: a list of loss tensors keeps every "
             "step's graph alive.")


# --- logistic regression on real data --------------------------------------------------

WORKED_X = [[2.0, 0.0], [0.0, -1.0], [1.0, 1.0], [3.0, -2.0]]  # with w = [1, 2], b = -1


def worked_example(device):
    x = torch.tensor(WORKED_X, device=device)
    return x, torch.tensor([1.0, 2.0], device=device), torch.tensor(-1.0, device=device)


def test_logits_are_x_at_w_plus_b(device):
    """logits(x, w, b) is one raw score per row: x @ w + b, shape (N,)."""
    x, w, b = worked_example(device)
    got = call(logreg.logits, x, w, b, what="logits(x (4, 2), w (2,), b ())")
    if tuple(got.shape) != (4,) or not torch.allclose(got.cpu(), torch.tensor([1.0, -3, 2, -2])):
        fail(f"logits(x, w, b) for x = {WORKED_X}, w = [1, 2], b = -1 returned "
             f"{got.tolist()}; expected one score per row, x @ w + b = [1, -3, 2, -2].")


@pytest.mark.requires("test_logits_are_x_at_w_plus_b")
def test_predict_proba_is_the_sigmoid_of_the_logits(device):
    """predict_proba is sigmoid(x @ w + b): the probability of class 1, in [0, 1]."""
    x, w, b = worked_example(device)
    got = call(logreg.predict_proba, x, w, b, what="predict_proba(x (4, 2), w (2,), b ())")
    expected = torch.sigmoid(torch.tensor([1.0, -3, 2, -2]))
    assert_finite(got, "predict_proba's output")
    if tuple(got.shape) != (4,) or not torch.allclose(got.cpu(), expected, atol=1e-6):
        fail(f"predict_proba for logits [1, -3, 2, -2] returned {got.tolist()}; expected "
             f"sigmoid of each logit, {[round(v, 4) for v in expected.tolist()]}: a positive "
             f"logit means class 1 is more likely than not.")


@pytest.mark.requires("test_predict_proba_is_the_sigmoid_of_the_logits")
def test_accuracy_of_a_worked_example(device):
    """Predicted class 1 where the probability is at least 0.5 (a logit of exactly 0 too)."""
    x = torch.tensor([[2.0], [-1.0], [0.0], [3.0], [-2.0], [1.0], [-1.5]], device=device)
    w, b = torch.ones(1, device=device), torch.zeros((), device=device)
    y = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0], device=device)
    got = call(logreg.accuracy, x, y, w, b, what="accuracy on 7 rows")
    if not isinstance(got, float) or abs(got - 5 / 7) > 1e-6:
        fail(f"accuracy for logits [2, -1, 0, 3, -2, 1, -1.5] (probabilities 0.88, 0.27, 0.5, "
             f"0.95, 0.12, 0.73, 0.18) against labels [1, 0, 1, 1, 0, 0, 1] returned {got!r}; "
             f"expected the float 5/7 = 0.714: rows 1 to 5 are right, rows 6 and 7 are not. A "
             f"row is predicted as class 1 when its probability is at least 0.5, as the "
             f"docstring says.")


@pytest.mark.requires("test_logits_are_x_at_w_plus_b")
def test_bce_loss_is_the_cross_entropy_of_the_probabilities(device):
    """bce_loss = mean of -[y log p + (1 - y) log(1 - p)] with p = sigmoid(x @ w + b)."""
    x, y, _, _ = data.breast_cancer()
    x, y = x[:64].double(), y[:64].double()
    w, b = seeded(30, seed=0) * 0.3, torch.tensor(0.2, dtype=torch.float64)
    p = torch.sigmoid(x @ w + b)  # the oracle, by the definition, in float64 on the CPU
    expected = -(y * p.log() + (1 - y) * (1 - p).log()).mean().item()
    got = call(logreg.bce_loss, x.to(device), y.to(device), w.to(device), b.to(device),
               what="bce_loss on 64 biopsies",
               why="logits() returns raw scores: any real number, not probabilities.")
    assert_finite(got, "bce_loss on 64 biopsies")
    if abs(got.item() - expected) > 1e-6:
        fail(f"bce_loss returned {got.item():.4f}, but the binary cross-entropy of "
             f"predict_proba's probabilities is {expected:.4f}. Check what the loss function "
             f"receives and what it expects: probabilities or logits.")


@pytest.mark.requires("test_logits_are_x_at_w_plus_b")
def test_bce_loss_is_exact_for_confident_mistakes(device):
    """Logits of +-30 and +-50 on the wrong side cost 30 and 50 each, also in float32."""
    x = torch.tensor([[30.0], [-30.0], [50.0], [-50.0]], device=device)
    y = torch.tensor([0.0, 1.0, 0.0, 1.0], device=device)
    w, b = torch.ones(1, device=device), torch.zeros((), device=device)
    got = call(logreg.bce_loss, x, y, w, b, what="bce_loss on logits [30, -30, 50, -50]",
               why="logits() returns raw scores: any real number, not probabilities.").item()
    if not abs(got - 40.0) <= 1e-3:  # also fails on NaN
        fail(f"bce_loss on four confident mistakes (logits 30, -30, 50, -50 against labels "
             f"0, 1, 0, 1) is {got:.3f}; exactly it is mean(30, 30, 50, 50) = 40. In float32, "
             f"sigmoid(30) rounds to exactly 1, so a loss computed from probabilities takes "
             f"log(0) and has to clip it; computed from the logits, -log(sigmoid(z)) = "
             f"log(1 + exp(-z)) never rounds that way.")


def gd_oracle(x, y, lr, steps):
    """Plain gradient descent on the mean BCE in float64, with the gradient derived by hand.

    Returns w, b after ``steps`` steps and the loss before each step.
    """
    w, b = torch.zeros(x.shape[1], dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    losses = []
    for _ in range(steps):
        z = x @ w + b  # (N,)
        losses.append(F.binary_cross_entropy_with_logits(z, y).item())
        error = torch.sigmoid(z) - y  # (N,): dL/dz * N
        w, b = w - lr * x.T @ error / len(x), b - lr * error.mean()
    return w, b, losses


@pytest.mark.requires("test_bce_loss_is_the_cross_entropy_of_the_probabilities")
def test_train_logistic_is_plain_gradient_descent(device):
    """With lr=0.2, after 1 and after 3 steps, w and b equal w <- w - lr * dL/dw from zero."""
    x, y, _, _ = data.breast_cancer()
    x, y = x[:100].double(), y[:100].double()
    results = {}
    for steps in (1, 3):
        w, b, _ = call(logreg.train_logistic, x.to(device), y.to(device), lr=0.2, steps=steps,
                       what=f"train_logistic(x (100, 30), y, lr=0.2, steps={steps})",
                       why=UPDATE_HINT)
        assert_finite(torch.as_tensor(w), f"w from train_logistic(steps={steps})")
        w_ok, b_ok, _ = gd_oracle(x, y, 0.2, steps)
        results[steps] = torch.allclose(w.detach().cpu(), w_ok, atol=1e-8) and abs(
            b.item() - b_ok.item()) < 1e-8
    if not results[1]:
        fail("After one step from w = 0, b = 0, train_logistic(lr=0.2)'s weights differ from "
             "one step of gradient descent on the mean binary cross-entropy. Check the loss, "
             "that the step goes against the gradient, and that it is lr (the lr it is given) "
             "times the gradient.")
    if not results[3]:
        fail("The first step of train_logistic is right, but after three steps its weights "
             "differ from three steps of gradient descent. Each step must use the gradient "
             "of the current loss alone: what is in .grad when the second backward() adds "
             "its gradient?")


@pytest.mark.requires("test_train_logistic_is_plain_gradient_descent")
def test_train_logistic_reports_the_loss_before_each_step(device):
    """steps=4 gives 4 losses: the mean BCE before each update (ln 2 first, from w = 0)."""
    x, y, _, _ = data.breast_cancer()
    x, y = x[:100].double(), y[:100].double()
    _, _, losses = call(logreg.train_logistic, x.to(device), y.to(device), lr=0.2, steps=4,
                        what="train_logistic(x (100, 30), y, lr=0.2, steps=4)", why=UPDATE_HINT)
    expected = gd_oracle(x, y, 0.2, 4)[2]
    if len(losses) != 4:
        fail(f"train_logistic(steps=4) returned {len(losses)} losses; expected 4, one per step.")
    assert_finite(torch.tensor([float(v) for v in losses]), "The losses train_logistic returned")
    for k, (got, want) in enumerate(zip(losses, expected)):
        if abs(float(got) - want) > 1e-6:
            fail(f"train_logistic reported {float(got):.4f} as the loss of step {k + 1}; the "
                 f"mean binary cross-entropy before that step is {want:.4f}"
                 + (" (with w = 0 every probability is 0.5: ln 2)" if k == 0 else "") + ". The "
                 "losses must be the ones being minimised, taken before each update.")


@pytest.mark.requires("test_train_logistic_reports_the_loss_before_each_step")
def test_train_logistic_defaults_to_lr_0_5_and_300_steps(device):
    """train_logistic(x, y) without lr or steps takes 300 steps of size lr = 0.5."""
    x, y, _, _ = data.breast_cancer()
    x, y = x[:100].double(), y[:100].double()
    _, _, losses = call(logreg.train_logistic, x.to(device), y.to(device),
                        what="train_logistic(x (100, 30), y)", why=UPDATE_HINT)
    if len(losses) != 300:
        fail(f"train_logistic(x, y) returned {len(losses)} losses; by default it takes 300 "
             f"steps.")
    expected = gd_oracle(x, y, 0.5, 2)[2]
    if abs(float(losses[1]) - expected[1]) > 1e-6:
        fail(f"After one default step, train_logistic(x, y) reports a loss of "
             f"{float(losses[1]):.4f}; one step of gradient descent with the default lr = 0.5 "
             f"gives {expected[1]:.4f}. Callers that leave lr out rely on the documented "
             f"default.")


def test_train_logistic_returns_plain_tensors(device):
    """The trained w and b carry no autograd history; the losses are Python floats."""
    x, y, _, _ = data.breast_cancer()
    w, b, losses = call(logreg.train_logistic, x[:50].to(device), y[:50].to(device), lr=0.2,
                        steps=2, what="train_logistic(x (50, 30), y, lr=0.2, steps=2)",
                        why=UPDATE_HINT)
    for name, t in (("w", w), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.requires_grad:
            fail(f"train_logistic returned {name} that still requires grad (or is not a "
                 f"tensor). Trained parameters handed to other code should be cut out of the "
                 f"graph: otherwise every use records new graph nodes, and .numpy() refuses "
                 f"them.")
    if not all(isinstance(v, float) for v in losses):
        fail("train_logistic's losses are not all Python floats: a list of loss tensors keeps "
             "every step's graph alive.")


@pytest.mark.trains
@pytest.mark.requires("test_train_logistic_is_plain_gradient_descent",
                      "test_bce_loss_is_exact_for_confident_mistakes")
def test_logistic_regression_diagnoses_tumours(device):
    """Trained on 427 real biopsies, the model labels at least 93% of 142 held-out ones."""
    x_train, y_train, x_test, y_test = data.breast_cancer(seed=0)
    w, b, _ = call(logreg.train_logistic, x_train.to(device), y_train.to(device), lr=0.5,
                   steps=200, what="train_logistic on 427 biopsies", why=UPDATE_HINT)
    correct = ((torch.sigmoid(x_test @ w.cpu() + b.cpu()) >= 0.5).float() == y_test)
    assert_accuracy_at_least(correct.float().mean().item(), 0.93,
                             "logistic regression on held-out biopsies",
                             "If the earlier tests pass, look at the update and the loss.")


# --- the data and the scripts ----------------------------------------------------------


@pytest.mark.trains
def test_load_data_standardises_with_training_statistics():
    """A quarter held out, no overlap, same every time; scaled by the training split's stats."""
    from sklearn.datasets import load_breast_cancer

    parts = call(logreg.load_data, seed=0, what="load_data(seed=0)")
    x_train, y_train, x_test, y_test = parts
    if (len(x_train), len(y_train), len(x_test), len(y_test)) != (427, 427, 142, 142):
        fail(f"load_data gave {len(x_train)} training and {len(x_test)} test biopsies; "
             f"expected 427 and 142: a quarter of the 569 held out, each once.")
    assert_finite(torch.cat([x_train, x_test]), "The features from load_data")
    mean, std = x_train.mean(dim=0), x_train.std(dim=0)
    if not (mean.abs().max() < 1e-4 and (std - 1).abs().max() < 1e-4):
        fail(f"The training features from load_data have means up to {mean.abs().max():.3g} "
             f"and standard deviations from {std.min():.3g} to {std.max():.3g}; standardised "
             f"with the training split's own statistics they would be 0 and 1. The statistics "
             f"must come from the training split only: what the model is tested on may not "
             f"leak into what it learns from.")
    if x_test.mean(dim=0).abs().max() < 1e-4:
        fail("The test features from load_data have a mean of exactly 0: they were scaled "
             "with their own statistics. The test split must be scaled with the training "
             "split's mean and standard deviation, as new data would be.")
    # One scaling for both splits: feature by feature, the sorted values of both splits
    # together are one straight line (x - mean) / std of the sorted raw measurements.
    raw = torch.from_numpy(load_breast_cancer().data).sort(dim=0).values  # (569, 30)
    scaled = torch.cat([x_train, x_test]).double().sort(dim=0).values  # (569, 30)
    slope = (scaled[-1] - scaled[0]) / (raw[-1] - raw[0])  # (30,): 1 / std of each feature
    off_line = (scaled - scaled[0] - slope * (raw - raw[0])).abs().max().item()
    if not off_line < 1e-3:
        fail(f"The features of load_data's two splits are not one scaling of the raw "
             f"measurements: a standardised value is up to {off_line:.3g} away from the line "
             f"(raw - mean) / std that the others lie on. Both splits must be scaled with the "
             f"same numbers, the training split's mean and standard deviation, exactly as "
             f"new data would be.")
    shared = torch.cdist(x_test.double(), x_train.double()).min().item()
    if shared < 1e-9:
        fail("A biopsy is in both the training and the test split of load_data: the test "
             "accuracy then measures memory, not diagnosis.")
    again = call(logreg.load_data, what="load_data() (the default seed, 0)")
    other = call(logreg.load_data, seed=1, what="load_data(seed=1)")
    if not torch.equal(again[3], y_test) or not torch.equal(again[2], x_test):
        fail("load_data() and load_data(seed=0) held out different biopsies: the default "
             "seed is 0, and the split must depend on the seed alone, so that results can "
             "be compared between runs.")
    if torch.equal(other[2], x_test):
        fail("load_data(seed=1) held out the same biopsies as seed=0: the seed must decide "
             "the split.")


def run_script(module, argv: list[str]):
    """module.main(argv); the exit code if it stops with SystemExit, else None."""
    try:
        module.main(argv)
    except SystemExit as exc:
        return exc.code
    except Exception as exc:  # noqa: BLE001 - a traceback is the finding
        fail(f"{module.resolve().__name__}.py {' '.join(argv)} raised {type(exc).__name__}: "
             f"{exc}. Expected argparse to refuse a nonsensical value with one line and exit "
             f"status 2, never a traceback.")
    return None


@pytest.mark.trains
@pytest.mark.parametrize("name", ["linreg", "logreg"])
def test_script_help_says_what_it_does(name):
    """`python NAME.py --help` describes the script with its docstring's first line."""
    module = {"linreg": linreg, "logreg": logreg}[name]
    assert_help_opens_with_summary(module.resolve(), f"{name}.py")


@pytest.mark.trains
def test_scripts_reject_nonsense_arguments(capsys):
    """linreg.py and logreg.py refuse a zero or negative lr or step count: one line, exit 2."""
    for module, name in ((linreg, "linreg.py"), (logreg, "logreg.py")):
        for argv in (["--lr", "0"], ["--lr", "-0.5"], ["--steps", "0"], ["--steps", "-3"]):
            code = run_script(module, argv)
            lines = capsys.readouterr().err.strip().splitlines()
            if code != 2 or not lines or "error:" not in lines[-1]:
                fail(f"{name} {' '.join(argv)} exited with {code!r} and printed "
                     f"{chr(10).join(lines)!r}; expected argparse's usage and one 'error:' "
                     f"line, exit status 2. A learning rate and a number of steps must be "
                     f"greater than 0: with 0 steps there is no loss to print, and a "
                     f"negative lr climbs the loss.")


@pytest.mark.trains
@pytest.mark.requires("test_fit_linear_recovers_known_weights",
                      "test_fit_linear_reports_the_loss_before_each_step")
def test_linreg_script_prints_the_recovered_weights(capsys):
    """`python linreg.py` prints the loss going down and w, b close to [2, -3, 0.5] and 1."""
    run_script(linreg, [])
    out = capsys.readouterr().out
    found = re.search(r"w = \[([^\]]*)\]", out)
    if not found or "loss" not in out:
        fail(f"linreg.py printed {out.strip()!r}; expected the loss and the fitted w and b.")
    w = [float(v) for v in found[1].split(",")]
    if len(w) != 3 or max(abs(a - t) for a, t in zip(w, (2.0, -3.0, 0.5))) > 0.05:
        fail(f"linreg.py printed w = {w}; the data were made with w = [2, -3, 0.5].")
    x, y = linreg.make_data()
    fitted, _, losses = linreg.fit_linear(x, y, lr=0.1, steps=200)  # the defaults --help shows
    check_loss_line("linreg.py", [], out, losses)
    if w != [round(v, 3) for v in fitted.tolist()]:
        fail(f"linreg.py printed w = {w}, but fit_linear with the script's defaults (lr 0.1, "
             f"200 steps) on make_data() finds {[round(v, 3) for v in fitted.tolist()]} (to 3 "
             f"decimals): the script should report the weights it fitted.")
    run_script(linreg, ["--lr", "0.1", "--steps", "3"])
    check_loss_line("linreg.py", ["--lr", "0.1", "--steps", "3"], capsys.readouterr().out,
                    linreg.fit_linear(x, y, lr=0.1, steps=3)[2])


def check_loss_line(name: str, argv: list[str], out: str, losses: list[float]) -> None:
    """The line 'loss FIRST -> LAST after N steps' against the losses of the same fit."""
    command = " ".join([name, *argv])
    found = re.search(r"loss (\S+) -> (\S+) after (\d+) steps", out)
    if not found:
        fail(f"{command} printed {out.strip()!r}; expected a line 'loss FIRST -> LAST after N "
             f"steps'.")
    first, last, steps = float(found[1]), float(found[2]), int(found[3])
    if steps != len(losses) or not (abs(first - losses[0]) < 6e-4
                                    and abs(last - losses[-1]) < 6e-5):
        fail(f"{command} printed {found[0]!r}; the same fit reports {len(losses)} losses, the "
             f"first {losses[0]:.3f} and the last {losses[-1]:.4f}. The line should describe "
             f"the run it ends: where the loss started, where it ended, after how many steps.")


@pytest.mark.trains
@pytest.mark.requires("test_train_logistic_reports_the_loss_before_each_step",
                      "test_accuracy_of_a_worked_example")
def test_logreg_script_reports_its_losses_and_accuracy(capsys):
    """`python logreg.py` prints its first and last loss and the accuracy on both splits."""
    x_train, y_train, x_test, y_test = logreg.load_data(seed=0)
    w, b, losses = logreg.train_logistic(x_train, y_train, lr=0.5, steps=300)  # the defaults
    run_script(logreg, [])
    out = capsys.readouterr().out
    check_loss_line("logreg.py", [], out, losses)
    found = re.search(r"train ([\d.]+)%, test ([\d.]+)% \((\d+) held-out", out)
    expected = (100 * logreg.accuracy(x_train, y_train, w, b),
                100 * logreg.accuracy(x_test, y_test, w, b))
    if not found or int(found[3]) != 142 or max(
            abs(float(found[1]) - expected[0]), abs(float(found[2]) - expected[1])) > 0.06:
        fail(f"logreg.py printed {out.strip()!r}; with its defaults (lr 0.5, 300 steps, the "
             f"split of seed 0) the accuracy is {expected[0]:.1f}% on the training split and "
             f"{expected[1]:.1f}% on the 142 held-out tumours.")
    argv = ["--lr", "0.5", "--steps", "3"]
    run_script(logreg, argv)
    check_loss_line("logreg.py", argv, capsys.readouterr().out,
                    logreg.train_logistic(x_train, y_train, lr=0.5, steps=3)[2])


@pytest.mark.trains
@pytest.mark.requires("test_fit_linear_is_plain_gradient_descent",
                      "test_train_logistic_is_plain_gradient_descent")
def test_scripts_run_from_the_command_line(capsys):
    """`python linreg.py --steps 2` and `python logreg.py --steps 2` run their main()."""
    for module, name in ((linreg, "linreg.py"), (logreg, "logreg.py")):
        ended = run_as_main(module.resolve().__file__, ["--steps", "2"])
        if ended != "returned":
            fail(f"python {name} --steps 2 {ended}; expected it to run.")
        out = capsys.readouterr().out
        if "after 2 steps" not in out:
            fail(f"python {name} --steps 2 printed {out.strip()!r}; expected it to train for 2 "
                 f"steps and report them. Run as a file, a script's module is named "
                 f"'__main__', and the block at its end decides whether main() runs.")


@pytest.mark.trains
@pytest.mark.requires("test_scripts_run_from_the_command_line")
def test_scripts_do_not_start_when_run_under_another_name():
    """Run under another module name ('<run_path>', as runpy.run_path names it by default),
    linreg.py and logreg.py only define their functions: main() starts only in a module
    named '__main__'."""
    for module, name in ((linreg, "linreg.py"), (logreg, "logreg.py")):
        assert_not_started_under_another_name(module.resolve().__file__, name)
