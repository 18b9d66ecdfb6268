"""Kernel view of fine-tuning (Malladi et al., ICML 2023): the eNTK of a model's logits at θ0
(``ntk``) and kernel solvers (``solve``), pure functions in ``algorithm``; LM-BFF prompts in ``prompts``."""
from raysel.methods.kernel.algorithm import (FORMULAS, SOLVERS, SUBSETS, LogitsFn, Prediction, binary,
                                             classifier_logits_fn, ntk, prompt_logits_fn, select_params, solve)
from raysel.methods.kernel.prompts import PROMPTS, Prompt, label_word_ids, prompt_for

__all__ = ["FORMULAS", "PROMPTS", "SOLVERS", "SUBSETS", "LogitsFn", "Prediction", "Prompt", "binary",
           "classifier_logits_fn", "label_word_ids", "ntk", "prompt_for", "prompt_logits_fn", "select_params",
           "solve"]
