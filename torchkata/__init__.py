"""torchkata: the harness behind a self-checking PyTorch kata.

Learners never need to read this package. Exercise suites use two things from it:

* :func:`under_test` gives a test file the learner's code (or the reference's, or a
  mutated copy's, whichever ``--target`` names), loaded lazily and in isolation;
* :mod:`torchkata.checks` holds the assertions that several exercises share.

Importing this package is cheap: nothing here imports torch at the top level.
"""

from torchkata.loader import under_test

__all__ = ["under_test"]
__version__ = "0.1.0"
