"""The next-word prediction study on Sent140: server-only vs federated vs pretrain + fine-tune.

Hard et al. 2018 pretrain a keyboard model on server-side proxy data and refine it with
federated training on users' text. This script runs the three arms of that comparison at a
reduced budget, all scored on the same users' held-out tweets:

1. **server-only**: ``examples/nwp_sent140_server.toml`` (centralised SGD on the proxy corpus,
   ``--server-epochs`` epochs), then ``fedkit export`` of its final model as a bundle;
2. **federated from scratch**: the ``scratch`` arm of ``examples/nwp_sent140_federated.toml``
   (FedAvg over the users, ``--rounds`` rounds of ``--cohort`` users);
3. **pretrain + fine-tune**: its ``finetune`` arm, the same FedAvg started from the bundle
   (``[run] init_from``).

Scores (:func:`fedkit.nwp_eval.nwp_scores`): top-1 and top-3 accuracy over targets that are
vocabulary words (padding, out-of-vocabulary and end-of-tweet targets excluded) and perplexity,
from each run's kept final model. The federated arms' recorded per-round test accuracy (every
``eval_every`` rounds; it counts oov/eos targets too) gives accuracy at equal rounds. Prints a
table and writes JSON.

    .venv/bin/python benchmarks/nwp_study.py [--rounds 60] [--cohort 40] [--server-epochs 1]
        [--out DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("FEDKIT_DATA", str((REPO / ".." / "shared" / "data").resolve()))


def _study(path: Path, overrides: dict[str, Any], init_from: Path | None = None) -> Any:
    from fedkit.experiment.config import study_from_mapping

    doc = tomllib.loads(path.read_text())
    for arm in doc.get("arms", []):
        if "init_from" in arm.get("run", {}) and init_from is not None:
            arm["run"]["init_from"] = str(init_from)
    return study_from_mapping(doc, default_name=path.stem, overrides=overrides)


def _score(out: Path, run_id: int) -> dict[str, float]:
    from fedkit.data.datasets import load_dataset
    from fedkit.experiment.final_model import load_final_model, model_file
    from fedkit.experiment.results import ResultsStore, results_path
    from fedkit.nwp_eval import nwp_scores

    final = load_final_model(model_file(out, run_id))
    with ResultsStore(results_path(out), create=False) as store:
        options = store.run(run_id).config["data"].get("options", {})
    ds = load_dataset("sent140_nwp", **{**options, "part": "users"})
    assert final.words == ds.words
    model = final.spec.build()
    model.load_state_dict(final.params)
    v = len(ds.words or ())
    s = nwp_scores(model, ds.test.x, ds.test.y, pad=0, oov=v + 1, eos=v + 3)
    return {"top1": s.top1, "top3": s.top3, "perplexity": s.perplexity, "targets": s.targets}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--cohort", type=int, default=40)
    p.add_argument("--server-epochs", type=int, default=1)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "nwp_study")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "nwp_study.json")
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    from fedkit.experiment.export import export_run
    from fedkit.experiment.results import ResultsStore, results_path
    from fedkit.experiment.runner import run_study

    out: Path = args.out
    if (out / "results.sqlite").exists():
        raise SystemExit(f"{out} holds results already: pass a new --out")
    bundle = out / "server_bundle"
    t0 = time.perf_counter()
    with ResultsStore(results_path(out)) as store:
        server = _study(
            REPO / "examples" / "nwp_sent140_server.toml", {"run.rounds": args.server_epochs}
        )
        (s_out,) = run_study(server, store)
        assert s_out.summary is not None, s_out.error
        t_server = time.perf_counter() - t0
        export_run(out, s_out.run_id, bundle)
        fed = _study(
            REPO / "examples" / "nwp_sent140_federated.toml",
            {"run.rounds": args.rounds, "run.clients_per_round": args.cohort},
            init_from=bundle,
        )
        outcomes = run_study(fed, store)
        curves = {
            o.name: [
                (r.round + 1, r.test_accuracy)
                for r in store.rounds(o.run_id)
                if r.test_accuracy is not None
            ]
            for o in outcomes
        }
    wall = time.perf_counter() - t0
    arms = {"server-only": s_out, **{o.name: o for o in outcomes}}
    rows = {}
    for name, o in arms.items():
        assert o.summary is not None, (name, o.error)
        rows[name] = {
            **_score(out, o.run_id),
            "rounds": o.summary.rounds,
            "wall_seconds": o.summary.wall_seconds,
        }
    label = {
        "server-only": f"server-only ({args.server_epochs} epoch(s) on the proxy corpus)",
        "scratch": f"federated from scratch ({args.rounds} rounds x {args.cohort} users)",
        "finetune": f"pretrain + fine-tune ({args.rounds} rounds x {args.cohort} users)",
    }
    print(f"{'arm':58} {'top-1':>7} {'top-3':>7} {'ppl':>8} {'wall s':>7}")
    for name, r in rows.items():
        print(
            f"{label[name]:58} {r['top1']:7.4f} {r['top3']:7.4f} {r['perplexity']:8.1f} "
            f"{r['wall_seconds']:7.1f}"
        )
    print("\nrecorded test accuracy (all targets) at equal rounds: round, scratch, finetune")
    for (rnd, a), (_, b) in zip(curves["scratch"], curves["finetune"], strict=True):
        print(f"{rnd:5d} {a:8.4f} {b:8.4f}")
    record = {
        "budget": {
            "rounds": args.rounds,
            "cohort": args.cohort,
            "server_epochs": args.server_epochs,
            "server_seconds": t_server,
            "total_seconds": wall,
        },
        "arms": rows,
        "curves": curves,
        "torch_threads": torch.get_num_threads(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    main()
