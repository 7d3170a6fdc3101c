"""Workflows: the method packages put together (the pipeline, pruning a checkpoint, architecture search with
retraining, the small-scale ablations). The CLI verbs in `minitron.commands` are thin wrappers around them."""
