"""ambiguous-digits: which handwritten digits in MNIST are truly ambiguous, and why."""

__version__ = "0.14.1"
