"""IGF — Information Gain Filtration (Antonello et al., ACL 2021).

``algorithm`` holds the pure functions (tensors in, tensors out: information gain, the secondary
learner, thresholds, batch filling); ``recipe`` the method raysel schedules (``method: igf``).
"""
from raysel.methods.igf.algorithm import (SecondaryLearner, accept, fill_batch, information_gain,
                                          objective_and_pool, objective_perplexity, predict, rank_correlation,
                                          sample_context, sequence_losses, threshold_at,
                                          train_secondary_learner, zscore)
from raysel.methods.igf.recipe import IGF, IGFParams

__all__ = ["IGF", "IGFParams", "SecondaryLearner", "accept", "fill_batch", "information_gain", "objective_and_pool",
           "objective_perplexity", "predict", "rank_correlation", "sample_context", "sequence_losses", "threshold_at",
           "train_secondary_learner", "zscore"]
