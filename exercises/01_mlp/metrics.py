"""Classification metrics, written out by hand so that each step is visible.

Conventions follow scikit-learn: in a confusion matrix, row i counts the samples whose
true class is i and column j those predicted as class j.
"""

import torch


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose highest score is the true class.

    logits: (B, C) scores, one row per sample; targets: (B,) class indices.
    """
    predictions = logits.argmax(dim=0)  # (B,): the best class of each row
    return (predictions == targets).float().mean().item()


def confusion_matrix(
    predicted: torch.Tensor, actual: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """(C, C) int64 counts: entry [i, j] is how many samples of class i were predicted as j."""
    counts = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=actual.device)
    ones = torch.ones_like(actual, dtype=torch.int64)
    counts.index_put_((actual, predicted), ones, accumulate=True)
    return counts


def precision_recall_f1(cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class precision, recall and F1 (each of shape (C,), float64) from a confusion matrix.

    Where a ratio is 0/0 (a class never predicted, or never present) it counts as 0.
    """
    cm = cm.double()
    true_positives = cm.diag()
    predicted_as = cm.sum(dim=0)  # column sums: everything predicted as each class
    actually_is = cm.sum(dim=1)  # row sums: everything that truly is each class
    precision = true_positives / predicted_as.clamp(min=1)
    recall = true_positives / actually_is.clamp(min=1)
    both = precision + recall
    f1 = torch.where(both > 0, 2 * precision * recall / both.clamp(min=1e-12), 0.0)
    return precision, recall, f1


def macro_f1(cm: torch.Tensor) -> float:
    """The unweighted mean of the per-class F1 scores: every class counts the same."""
    precision, recall, _ = precision_recall_f1(cm)
    p, r = precision.mean(), recall.mean()
    return (2 * p * r / (p + r)).item()
