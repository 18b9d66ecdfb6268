"""CaMeLS, context-aware meta-learned loss scaling (Hu et al., EMNLP 2023): the weighted loss, the weight
model and the differentiable inner loop as pure functions in ``algorithm``; the baseline weightings in
``baselines``; QA encoding, generation and scores in ``qa``; the three-phase recipe (``Camels``) in ``recipe``, each phase in its module (``qa_tune``,
``meta_train``, ``evaluate``)."""
from raysel.methods.camels.algorithm import (TokenWeightModel, inner_loop, kl_locality, logits_of, meta_step,
                                             outer_loss, padded_denominator, qa_nll, sgd_step, trainable_params,
                                             weight_norm, weighted_lm_loss)
from raysel.methods.camels.baselines import (TfidfScorer, apply_min_threshold, char_scores_weights,
                                             rule_based_spans, span_weights, tfidf_corpus)
from raysel.methods.camels.params import CamelsParams
from raysel.methods.camels.recipe import Camels

__all__ = ["Camels", "CamelsParams", "TfidfScorer", "TokenWeightModel", "apply_min_threshold", "char_scores_weights",
           "inner_loop", "kl_locality", "logits_of", "meta_step", "outer_loss", "padded_denominator", "qa_nll",
           "rule_based_spans", "sgd_step", "span_weights", "tfidf_corpus", "trainable_params", "weight_norm",
           "weighted_lm_loss"]
