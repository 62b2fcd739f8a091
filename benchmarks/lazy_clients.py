"""Peak memory of a lazily supplied population: fedkit vs a plain PyTorch loop (issue 19).

Setting: 1,000 clients × 600 CNN-sized samples (1×28×28 float32: 1.9 GB if held at once), each
client's data generated from its id when it is selected; McMahan et al.'s CNN, FedAvg, E = 1,
B = 50, ``--cohort`` clients per round. fedkit runs through :func:`fedkit.api.federate` with a
:class:`fedkit.data.lazy.LazyClients` (the store's LRU keeps the last 16 clients); the plain loop
generates each selected client's tensors, trains a copy with ``torch.optim.SGD`` and averages.
Each side runs in its own fresh child process (same imports), which reports its own peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``); both children are started by one run of this
script, one after the other, and the ratio is printed. ``--eager`` adds a third child holding
every client's data in an ordinary (eager) ClientStore, the behaviour before lazy clients.

    python benchmarks/lazy_clients.py [--rounds 2] [--cohort 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CLIENTS, SAMPLES, SHAPE = 1000, 600, (1, 28, 28)


def _client(cid: int) -> tuple[object, object]:
    import torch

    g = torch.Generator().manual_seed(cid)
    return torch.randn(SAMPLES, *SHAPE, generator=g), torch.randint(0, 10, (SAMPLES,), generator=g)


def _child(kind: str, rounds: int, cohort: int) -> dict[str, float]:
    import torch

    from fedkit.algorithm import ClientData
    from fedkit.algorithms import FedAvg
    from fedkit.api import federate
    from fedkit.data.datasets import Split
    from fedkit.data.lazy import LazyClients
    from fedkit.data.store import ClientStore
    from fedkit.local import LocalTraining
    from fedkit.models import build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("cnn", num_classes=10, input_shape=SHAPE)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    algo = FedAvg(local=LocalTraining(lr=0.05, epochs=1, batch_size=50))
    if kind == "plain":
        params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        g = torch.Generator().manual_seed(0)
        for _ in range(rounds):
            chosen = torch.randperm(CLIENTS, generator=g)[:cohort].tolist()
            acc = {k: torch.zeros_like(v) for k, v in params.items()}
            for cid in chosen:
                x, y = _client(cid)
                model.load_state_dict(params)
                opt = torch.optim.SGD(model.parameters(), lr=0.05)
                for idx in torch.randperm(SAMPLES, generator=g).split(50):
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                    opt.step()
                for k, v in model.state_dict().items():
                    acc[k] += v / cohort
            params = acc
    else:

        def load(cid: int) -> ClientData:
            x, y = _client(cid)
            return ClientData(x, y)  # type: ignore[arg-type]

        test = Split(torch.zeros(1, *SHAPE), torch.zeros(1, dtype=torch.int64))
        lazy = LazyClients(
            sizes=[SAMPLES] * CLIENTS, load=load, test=test, num_classes=10, input_shape=SHAPE
        )
        if kind == "eager":
            store = ClientStore.from_clients([load(c) for c in range(CLIENTS)])
            clients: object = [store.data(c) for c in range(CLIENTS)]
        else:
            clients = lazy
        federate(
            model,
            clients,
            algorithm=algo,
            rounds=rounds,
            clients_per_round=cohort,  # type: ignore[arg-type]
        )
    return {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_imports_mb": base / 1024,
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    """Run the children and print (and optionally save) their peaks and the ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cohort", type=int, default=5)
    p.add_argument("--eager", action="store_true")
    p.add_argument("--json", type=Path)
    p.add_argument("--child", choices=["plain", "fedkit", "eager"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(_child(a.child, a.rounds, a.cohort)))
        return
    out: dict[str, object] = {"clients": CLIENTS, "samples": SAMPLES, "rounds": a.rounds}
    for kind in ["plain", "fedkit", *(["eager"] if a.eager else [])]:
        cmd = [sys.executable, __file__, "--child", kind, "--rounds", str(a.rounds)]
        cmd += ["--cohort", str(a.cohort)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[kind] = json.loads(res.stdout.strip().splitlines()[-1])
        print(kind, out[kind], flush=True)
    plain, fed = out["plain"], out["fedkit"]
    ratio = fed["peak_rss_mb"] / plain["peak_rss_mb"]  # type: ignore[index]
    out["peak_ratio_fedkit_over_plain"] = ratio
    print(f"peak RSS fedkit / plain loop = {ratio:.3f}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
