"""Kernel view of fine-tuning (Malladi et al., ICML 2023): the eNTK of a model's logits at θ0
(``ntk``) and kernel solvers (``solve``), pure functions in ``algorithm``."""
from raysel.methods.kernel.algorithm import (FORMULAS, SOLVERS, SUBSETS, LogitsFn, Prediction, binary,
                                             classifier_logits_fn, ntk, prompt_logits_fn, select_params, solve)

__all__ = ["FORMULAS", "SOLVERS", "SUBSETS", "LogitsFn", "Prediction", "binary", "classifier_logits_fn", "ntk",
           "prompt_logits_fn", "select_params", "solve"]
