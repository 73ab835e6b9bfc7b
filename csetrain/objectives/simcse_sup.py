"""`objective=simcse_sup`: supervised SimCSE on NLI triplets (Gao et al., arXiv 2104.08821, §4)."""

from csetrain.objectives.base import InfoNCEObjective


class SimCSESup(InfoNCEObjective):
    """Premise vs entailment hypothesis, with contradictions as hard negatives.

    Batch fields: `anchor` (sent0), `positive` (sent1) from the corpus, plus `hard_negative`
    (hard_neg) requested by the miner (`negative_mining=hard_from_data`). Every anchor is scored
    against all B positives and all B hard negatives; `hard_negative_weight` is added to the
    logit of its own hard negative, exactly as SimCSE's `hard_negative_weight` (the log of the
    multiplicative weight; 0 = weight 1, the paper's default). With k hard negatives a row
    (fields `hard_negative_1..k`) the candidates are the B positives and all B*k negatives, and
    the weight is added to each of the anchor's own k (SimCSE itself has k = 1).
    """

    data_fields = ("anchor", "positive")
