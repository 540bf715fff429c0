"""ambiguous-digits: which handwritten digits in MNIST are truly ambiguous, and why."""

__version__ = "0.13.0"
