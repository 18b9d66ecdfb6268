"""Kernel view of fine-tuning (Malladi et al., ICML 2023): the eNTK of a model's logits at θ0
(``ntk``) and kernel solvers (``solve``), pure functions in ``algorithm``; the recipe (``Kernel``) in
``recipe``; LM-BFF prompts in raysel.data.prompts."""
from raysel.data.prompts import PROMPTS, Prompt, label_word_ids, prompt_for
from raysel.methods.kernel.algorithm import (CLASS_LAYOUTS, DECODERS, FORMULAS, SOLVERS, SUBSETS,
                                             FirstTokenClassifier, LogitsFn, Prediction, binary,
                                             classifier_logits_fn, first_token_features, linear_probe_classifier,
                                             ntk, prompt_logits_fn, select_params, solve)
from raysel.methods.kernel.recipe import Kernel, KernelParams

__all__ = ["CLASS_LAYOUTS", "DECODERS", "FORMULAS", "PROMPTS", "SOLVERS", "SUBSETS", "FirstTokenClassifier", "Kernel",
           "KernelParams", "LogitsFn", "Prediction", "Prompt", "binary", "classifier_logits_fn",
           "first_token_features", "label_word_ids", "linear_probe_classifier", "ntk", "prompt_for",
           "prompt_logits_fn", "select_params", "solve"]
