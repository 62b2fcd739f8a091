"""Next-word metrics recorded with a run's rounds: top-1, top-3 and perplexity over words.

For a next-word dataset (word vocabulary, classes = its ids: ``num_classes == len(words) + 4``)
the runner adds this probe: whenever central evaluation is due, the global model is scored on
the test split with :func:`fedkit.nwp_eval.nwp_scores` (targets that are vocabulary words only;
padding, out-of-vocabulary and end targets left out). The values are stored as the round's
``details`` (``nwp_top1``, ``nwp_top3``, ``nwp_perplexity``), beside the recorded accuracy, which
counts every non-padding target.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedkit.algorithm import RoundInfo
from fedkit.data.datasets import Dataset
from fedkit.models.spec import ModelSpec
from fedkit.nwp_eval import nwp_scores
from fedkit.params import Params, load_params
from fedkit.run import Probe

__all__ = ["nwp_probes"]


def nwp_probes(dataset: Dataset, spec: ModelSpec, *, every: int, rounds: int) -> list[Probe]:
    """The NWP probe for ``dataset`` (none for other tasks), due every ``every`` rounds and
    after the last (never when ``every`` is 0)."""
    words = dataset.words
    if words is None or dataset.num_classes != len(words) + 4 or every <= 0:
        return []
    model, test, v = spec.build(), dataset.test, len(words)

    def probe(params: Params, info: RoundInfo) -> Mapping[str, float]:
        if (info.round + 1) % every != 0 and info.round + 1 != rounds:
            return {}
        load_params(model, params)
        s = nwp_scores(model, test.x, test.y, pad=0, oov=v + 1, eos=v + 3)
        return {"nwp_top1": s.top1, "nwp_top3": s.top3, "nwp_perplexity": s.perplexity}

    return [probe]
