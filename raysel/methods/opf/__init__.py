"""Over-parameterized fine-tuning (Gao et al., ACL 2023): chosen matrices trained in MPO form and
multiplied back afterwards. Pure functions and ``MPOLinear`` in ``algorithm``; the recipe (``OPF``) in ``recipe``."""
from raysel.methods.opf.algorithm import (WEIGHT_TYPES, MPOBank, MPOLinear, auto_shapes, decompose,
                                          decomposition_rounds, fisher_scores, matrix_candidates, merge_all, mpo_contract, mpo_decompose,
                                          mpo_num_parameters, mpo_ranks, select_top, share_contractions)
from raysel.methods.opf.recipe import OPF, OPFParams

__all__ = ["OPF", "OPFParams", "WEIGHT_TYPES", "MPOBank", "MPOLinear", "auto_shapes", "decompose",
           "decomposition_rounds", "fisher_scores", "matrix_candidates", "merge_all", "mpo_contract", "mpo_decompose",
           "mpo_num_parameters", "mpo_ranks", "select_top", "share_contractions"]
