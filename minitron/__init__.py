"""minitron: turn one large language model into a family of smaller ones by structured pruning and
knowledge distillation (the Minitron method), on stock `transformers` models."""

__version__ = "0.1.0"
