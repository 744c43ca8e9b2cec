"""tillroll: a point-of-sale payment stack."""

__version__ = "0.1.0"
