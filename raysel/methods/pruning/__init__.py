"""Dataset pruning by per-example success rate (Tayaranian et al., CoLLAs 2024): H-scores and the
related scores, removal sets and subsets as pure functions in ``algorithm``; the two-stage recipe
(``Pruning``: scoring runs, then fine-tuning on subsets) in ``recipe``."""
from raysel.methods.pruning.algorithm import (ambiguous_subset, cartography, el2n_scores, forgetting_events,
                                              h_scores, keep_mask, ordered_subset, permutation, random_subset,
                                              record_step, removal_sets, winning_ticket)
from raysel.methods.pruning.recipe import (SCORING_SEEDS, Pruning, PruningParams, Recorder, Recording, Records,
                                           load_records, records_dir)

__all__ = ["SCORING_SEEDS", "Pruning", "PruningParams", "Recorder", "Recording", "Records", "ambiguous_subset",
           "cartography", "el2n_scores", "forgetting_events", "h_scores", "keep_mask", "load_records",
           "ordered_subset", "permutation", "random_subset", "record_step", "records_dir", "removal_sets",
           "winning_ticket"]
