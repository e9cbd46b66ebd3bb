"""Exercise 02: autograd, gradients by hand, and gradient descent without an optimizer.

Each test checks one property. Read the failure message first: it says what was expected,
what the code did instead, and why it matters.
"""

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn import functional as F

from torchkata import data, under_test
from torchkata.checks import assert_accuracy_at_least, call, fail

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
    got = call(grads.sigmoid, z, what="sigmoid (the custom autograd Function)")
    if not torch.allclose(got.cpu(), torch.sigmoid(z).cpu(), atol=1e-7):
        fail(f"sigmoid({z.tolist()}) returned {got.tolist()}, expected "
             f"{torch.sigmoid(z).tolist()}.")


def test_custom_sigmoid_backward_passes_gradcheck(device):
    """gradcheck in float64: the hand-written backward agrees with finite differences."""
    z = seeded(6, seed=0).mul(3).to(device).requires_grad_()
    passed = call(torch.autograd.gradcheck, grads.sigmoid, (z,), eps=1e-6, atol=1e-6,
                  raise_exception=False, what="torch.autograd.gradcheck(sigmoid, z)",
                  why="Sigmoid.backward must return one gradient per input of forward, "
                      "shaped like that input.")
    if passed:
        return
    weights = torch.arange(1.0, 7.0, dtype=torch.float64, device=device)
    (grads.sigmoid(z) * weights).sum().backward()
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


def test_fit_linear_recovers_known_weights(device):
    """On y = x @ [2, -3, 0.5] + 1 + small noise, gradient descent finds those numbers."""
    x, y, w_true, b_true = known_line(device)
    w, b, losses = call(linreg.fit_linear, x, y, lr=0.1, steps=200,
                        what="fit_linear(x (200, 3), y, lr=0.1, steps=200)", why=LEAF_HINT)
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
    if abs(got.item() - expected) > 1e-6:
        fail(f"bce_loss returned {got.item():.4f}, but the binary cross-entropy of "
             f"predict_proba's probabilities is {expected:.4f}. Check what the loss function "
             f"receives and what it expects: probabilities or logits.")


def test_bce_loss_is_exact_for_confident_mistakes(device):
    """Logits of +-30 and +-50 on the wrong side cost 30 and 50 each, also in float32."""
    x = torch.tensor([[30.0], [-30.0], [50.0], [-50.0]], device=device)
    y = torch.tensor([0.0, 1.0, 0.0, 1.0], device=device)
    w, b = torch.ones(1, device=device), torch.zeros((), device=device)
    got = call(logreg.bce_loss, x, y, w, b, what="bce_loss on logits [30, -30, 50, -50]",
               why="logits() returns raw scores: any real number, not probabilities.").item()
    if abs(got - 40.0) > 1e-3:
        fail(f"bce_loss on four confident mistakes (logits 30, -30, 50, -50 against labels "
             f"0, 1, 0, 1) is {got:.3f}; exactly it is mean(30, 30, 50, 50) = 40. In float32, "
             f"sigmoid(30) rounds to exactly 1, so a loss computed from probabilities takes "
             f"log(0) and has to clip it; computed from the logits, -log(sigmoid(z)) = "
             f"log(1 + exp(-z)) never rounds that way.")


def gd_oracle(x, y, lr, steps):
    """Plain gradient descent on the mean BCE in float64, with the gradient derived by hand."""
    w, b = torch.zeros(x.shape[1], dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for _ in range(steps):
        error = torch.sigmoid(x @ w + b) - y  # (N,): dL/dz * N
        w, b = w - lr * x.T @ error / len(x), b - lr * error.mean()
    return w, b


def test_train_logistic_is_plain_gradient_descent(device):
    """After 1 and after 3 steps, w and b equal those of w <- w - lr * dL/dw from zero."""
    x, y, _, _ = data.breast_cancer()
    x, y = x[:100].double(), y[:100].double()
    results = {}
    for steps in (1, 3):
        w, b, _ = call(logreg.train_logistic, x.to(device), y.to(device), lr=0.5, steps=steps,
                       what=f"train_logistic(x (100, 30), y, lr=0.5, steps={steps})",
                       why=UPDATE_HINT)
        w_ok, b_ok = gd_oracle(x, y, 0.5, steps)
        results[steps] = torch.allclose(w.detach().cpu(), w_ok, atol=1e-8) and abs(
            b.item() - b_ok.item()) < 1e-8
    if not results[1]:
        fail("After one step from w = 0, b = 0, train_logistic's weights differ from one step "
             "of gradient descent on the mean binary cross-entropy. Check the loss and that "
             "the step goes against the gradient.")
    if not results[3]:
        fail("The first step of train_logistic is right, but after three steps its weights "
             "differ from three steps of gradient descent. Each step must use the gradient "
             "of the current loss alone: what is in .grad when the second backward() adds "
             "its gradient?")


def test_logistic_regression_diagnoses_tumours(device):
    """Trained on 427 real biopsies, the model labels at least 93% of 142 held-out ones."""
    x_train, y_train, x_test, y_test = data.breast_cancer(seed=0)
    w, b, _ = call(logreg.train_logistic, x_train.to(device), y_train.to(device), lr=0.5,
                   steps=200, what="train_logistic on 427 biopsies", why=UPDATE_HINT)
    correct = ((torch.sigmoid(x_test @ w.cpu() + b.cpu()) >= 0.5).float() == y_test)
    assert_accuracy_at_least(correct.float().mean().item(), 0.93,
                             "logistic regression on held-out biopsies",
                             "If the earlier tests pass, look at the update and the loss.")
