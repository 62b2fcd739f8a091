"""``fedkit data …``: look at a federated partition before training on it.

``fedkit data describe FILE|--set key=value… [--json] [--plot PATH]`` builds the ``[data]`` section
of an experiment (a :class:`~fedkit.data.spec.DataSpec`) from an experiment TOML file and/or
``--set`` pairs, parsed and applied exactly as ``fedkit run --set`` does
(:func:`fedkit.experiment.config.parse_overrides`): ``--set data.num_clients=10``,
``--set data.options.num_users=4``; values are TOML values and ``--set`` wins over the file. The
old form, a key without a section (``num_clients=10``), is still read as a ``[data]`` key but is
deprecated (a warning on stderr names the ``data.`` spelling). Keys of other sections
(``run.rounds=3``) are accepted, so that ``fedkit run``'s ``--set`` list can be pasted as it is,
and named on stderr as not affecting the partition. It partitions the dataset and prints
per-client sample counts and label histograms:
a table (the first ``--rows`` clients, with a summary of all of them), JSON with ``--json`` (a
``clients`` list of objects with ``num_samples`` and ``label_histogram``), and with ``--plot`` a
PNG of stacked per-client label counts. For next-token datasets (targets ``(N, T)``) a sample is
a window and the histograms count the targets at every position (``"histogram_counts": "tokens"``).

``fedkit data list [--data DIR] [--no-verify] [--json]`` shows every known dataset with the state
of its files in the data directory (verified / present / missing / corrupt, from
:mod:`fedkit.data.datasets.catalog`) and which directory was used and by which lookup rule.
``fedkit data download NAME [--data DIR] [--mirror URL]`` fetches a dataset's files from their
canonical URLs, verifies their checksums and renames them into place; an unreachable network is
one line on stderr and exit status 1.
"""

from __future__ import annotations

import json
import statistics
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedkit.data.datasets import CommonOptions, FedkitDataError
from fedkit.data.datasets.base import data_root_lookup
from fedkit.data.partition import label_histograms, mean_total_variation
from fedkit.data.spec import DataSpec, FederatedData, build_federated

__all__ = [
    "app",
    "data_overrides",
    "deprecated_keys",
    "describe",
    "describe_json",
    "download",
    "list_datasets",
    "resolve_root",
    "spec_from_sources",
]

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None)

_MAX_PLOTTED = 200

_DATA_HELP = (
    "Data directory. Default, in order: $FEDKIT_DATA, else ../shared/data beside a source "
    "checkout, else ~/.cache/fedkit."
)


@app.callback()
def _data() -> None:
    """Inspect datasets and federated partitions."""


def data_overrides(pairs: list[str]) -> dict[str, Any]:
    """``--set`` pairs as ``fedkit run`` parses them, a key without a section read as ``data.``.

    ``["data.alpha=0.1", "num_clients=100", "options.cache=false"]`` -> ``{"data.alpha": 0.1,
    "data.num_clients": 100, "data.options.cache": False}``.

    Raises:
        ConfigError: A pair has no ``=`` or an empty key.
    """
    from fedkit.experiment.config import SECTIONS, parse_overrides

    return {
        key if key.partition(".")[0] in SECTIONS else f"data.{key}": value
        for key, value in parse_overrides(pairs).items()
    }


def deprecated_keys(pairs: list[str]) -> list[str]:
    """The keys of ``pairs`` given without a section (``num_clients=10``): the deprecated form
    that :func:`data_overrides` still reads as ``data.num_clients``."""
    from fedkit.experiment.config import SECTIONS, parse_overrides

    return [key for key in parse_overrides(pairs) if key.partition(".")[0] not in SECTIONS]


def spec_from_sources(file: Path | None, sets: list[str]) -> DataSpec:
    """The DataSpec of ``file``'s ``[data]`` table, overridden by ``--set`` pairs."""
    from fedkit.experiment.config import apply_overrides

    doc: dict[str, Any] = {}
    if file is not None:
        with file.open("rb") as fh:
            try:
                doc = tomllib.load(fh)
            except RecursionError:
                raise ValueError(f"{file}: values nested too deeply to parse") from None
        if not isinstance(doc.get("data"), dict):
            raise ValueError(f"{file}: no [data] table")
    table = apply_overrides(doc, data_overrides(sets)).get("data")
    if not table:
        raise ValueError(
            "give an experiment FILE or --set key=value pairs (e.g. --set data.dataset=mnist)"
        )
    return DataSpec.from_mapping(table)


def _histograms(fd: FederatedData) -> tuple[list[list[int]], list[int] | None]:
    ds = fd.dataset
    hist = label_histograms(ds.train.y, fd.train_parts, ds.num_classes)
    test_sizes = None if fd.test_parts is None else [len(p) for p in fd.test_parts]
    return hist.tolist(), test_sizes


def describe_json(spec: DataSpec, fd: FederatedData) -> dict[str, Any]:
    """The JSON document printed by ``describe --json``."""
    ds = fd.dataset
    hist, test_sizes = _histograms(fd)
    clients = []
    for i, part in enumerate(fd.train_parts):
        entry: dict[str, Any] = {
            "client": i,
            "num_samples": len(part),
            "label_histogram": hist[i],
        }
        if fd.client_names is not None:
            entry["name"] = fd.client_names[i]
        if test_sizes is not None:
            entry["num_test_samples"] = test_sizes[i]
        clients.append(entry)
    return {
        "spec": spec.to_mapping(),
        "dataset": ds.name,
        "num_classes": ds.num_classes,
        "num_clients": fd.num_clients,
        "num_train_samples": sum(len(p) for p in fd.train_parts),
        # "samples": one label per sample; "tokens": every next-token target (padding included)
        "histogram_counts": "samples" if ds.train.y.dim() == 1 else "tokens",
        "mean_total_variation": mean_total_variation(
            label_histograms(ds.train.y, fd.train_parts, ds.num_classes)
        ),
        "clients": clients,
    }


def _hist_cell(row: list[int], wide: bool) -> str:
    if not wide:
        return " ".join(str(c) for c in row)
    top = sorted(((c, k) for k, c in enumerate(row) if c > 0), reverse=True)[:3]
    more = sum(1 for c in row if c > 0) - len(top)
    text = ", ".join(f"{k}:{c}" for c, k in top)
    return text + (f", +{more} classes" if more > 0 else "")


def _print_table(console: Console, doc: dict[str, Any], rows: int) -> None:
    clients = doc["clients"]
    sizes = [c["num_samples"] for c in clients]
    present = [sum(1 for v in c["label_histogram"] if v > 0) for c in clients]
    summary = Table(title=f"{doc['dataset']}: {doc['spec'].get('partition')} partition", box=None)
    summary.add_column("")
    summary.add_column("value", justify="right")
    summary.add_row("clients", str(doc["num_clients"]))
    summary.add_row("training samples", str(doc["num_train_samples"]))
    summary.add_row(
        "samples per client (min / median / max)",
        f"{min(sizes)} / {statistics.median(sizes):g} / {max(sizes)}",
    )
    summary.add_row("classes per client (mean)", f"{statistics.fmean(present):.2f}")
    summary.add_row("mean TV distance to global labels", f"{doc['mean_total_variation']:.3f}")
    console.print(summary)
    wide = doc["num_classes"] > 10
    table = Table(
        title=None if wide else f"label histogram over classes 0..{doc['num_classes'] - 1}"
    )
    table.add_column("client", justify="right")
    has_names = any("name" in c for c in clients)
    if has_names:
        table.add_column("name")
    table.add_column("samples", justify="right")
    has_test = any("num_test_samples" in c for c in clients)
    if has_test:
        table.add_column("test", justify="right")
    table.add_column("classes", justify="right")
    table.add_column("top classes (class:count)" if wide else "labels")
    for c, k in zip(clients[:rows], present[:rows], strict=False):
        cells = [str(c["client"])]
        if has_names:
            cells.append(str(c.get("name", "")))
        cells.append(str(c["num_samples"]))
        if has_test:
            cells.append(str(c.get("num_test_samples", "")))
        cells += [str(k), _hist_cell(c["label_histogram"], wide)]
        table.add_row(*cells)
    console.print(table)
    if doc["histogram_counts"] == "tokens":
        console.print("label counts are next-token targets at every position (padding included)")
    if len(clients) > rows:
        console.print(f"… {len(clients) - rows} more clients (use --rows N or --json to see all)")


_PARAMETERS = (("alpha", "α"), ("beta", "β"), ("shards_per_client", "shards per client"))
"""The partition parameters named in a plot's title, with the symbols papers use."""


def plot_title(dataset: str, spec: dict[str, Any]) -> str:
    """``mnist: dirichlet partition (α = 0.5)``: the dataset, the partition and the partition
    parameters the spec sets (Dirichlet's α, a power law's β, shards per client)."""
    given = [f"{sym} = {spec[key]:g}" if isinstance(spec[key], float) else f"{sym} = {spec[key]}"
             for key, sym in _PARAMETERS if spec.get(key) is not None]  # fmt: skip
    return f"{dataset}: {spec.get('partition')} partition" + (
        f" ({', '.join(given)})" if given else ""
    )


def _save_plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    clients = doc["clients"][:_MAX_PLOTTED]
    hist = np.array([c["label_histogram"] for c in clients], dtype=np.int64)
    num_classes = hist.shape[1]
    fig, ax = plt.subplots(figsize=(min(4 + 0.12 * len(clients), 24), 4.5))
    cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "turbo")
    xs = np.arange(len(clients))
    bottom = np.zeros(len(clients))
    for k in range(num_classes):
        if not hist[:, k].any():
            continue
        color = cmap(k if num_classes <= 20 else k / max(num_classes - 1, 1))
        ax.bar(xs, hist[:, k], bottom=bottom, width=0.9, color=color, label=str(k), linewidth=0)
        bottom += hist[:, k]
    shown = "" if len(doc["clients"]) <= _MAX_PLOTTED else f" (first {_MAX_PLOTTED})"
    ax.set_title(f"{plot_title(doc['dataset'], doc['spec'])}, {doc['num_clients']} clients{shown}")
    ax.set_xlabel("client")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # client ids: no 2.5th client
    ax.set_xlim(-0.6, len(clients) - 0.4)
    tokens = doc["histogram_counts"] == "tokens"
    ax.set_ylabel("next-token targets by id" if tokens else "training samples by label")
    if num_classes <= 20:
        ax.legend(title="label", fontsize="small", ncol=2, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


@app.command()
def describe(
    file: Annotated[
        Path | None,
        typer.Argument(help="Experiment TOML; its [data] table is the data spec.", exists=True),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="data.KEY=value, as in `fedkit run --set`; overrides FILE (bare KEY: deprecated).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Save a PNG of per-client label counts.")
    ] = None,
    rows: Annotated[int, typer.Option("--rows", min=0, help="Clients listed in the table.")] = 20,
    root: Annotated[
        Path | None,
        typer.Option(
            "--root",
            "--data",
            help=_DATA_HELP,
        ),
    ] = None,
) -> None:
    """Per-client sample counts and label histograms of a federated partition."""
    console = Console()
    try:
        for key in deprecated_keys(sets or []):
            typer.echo(
                f"warning: --set {key}=… without a section is deprecated; write "
                f"--set data.{key}=… as for `fedkit run`",
                err=True,
            )
        foreign = [k for k in data_overrides(sets or []) if not k.startswith("data.")]
        if foreign:
            typer.echo(
                f"note: --set {', '.join(foreign)} do not shape a partition (only data.* keys do)",
                err=True,
            )
        spec = spec_from_sources(file, sets or [])
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        fd = build_federated(spec, root=root)
    except (FedkitDataError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    doc = describe_json(spec, fd)
    if as_json:
        typer.echo(json.dumps(doc))
    else:
        _print_table(console, doc, rows)
    if plot is not None:
        _save_plot(doc, plot)
        if not as_json:
            console.print(f"plot saved to {plot}")


def resolve_root(root: Path | None) -> tuple[Path, str]:
    """The data directory for ``--data DIR`` (``None``: not given) and the rule that chose it."""
    if root is not None:
        return root, "--data"
    return data_root_lookup()


@app.command("list")
def list_datasets(
    root: Annotated[Path | None, typer.Option("--data", "--root", help=_DATA_HELP)] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Check checksums (remembered per file, so only new or changed files are hashed).",
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Every known dataset and whether its files are present and verified in the data directory."""
    from fedkit.data.datasets.catalog import CATALOG, dataset_status

    where, how = resolve_root(root)
    options = CommonOptions()
    statuses = [dataset_status(name, where, options, verify=verify) for name in CATALOG]
    if as_json:
        doc = {
            "data_dir": str(where),
            "rule": how,
            "datasets": [
                {
                    "name": st.name,
                    "status": st.status,
                    "source": st.source,
                    "files": [{"path": p, "status": f} for p, f in st.files],
                }
                for st in statuses
            ],
        }
        typer.echo(json.dumps(doc))
        return
    console = Console(highlight=False)
    table = Table(title=None)
    table.add_column("dataset")
    table.add_column("status")
    table.add_column("files", justify="right")
    table.add_column("source")
    for st in statuses:
        done = sum(1 for _, f in st.files if f in ("verified", "present"))
        count = f"{done}/{len(st.files)}" if st.files else ""
        table.add_row(st.name, st.status, count, escape(st.source))
    console.print(escape(f"data directory {where} ({how})"))
    console.print(table)
    for st in statuses:
        for path, f in st.files:
            if f == "corrupt":
                console.print(escape(f"corrupt: {where / path} (checksum mismatch; delete it)"))


@app.command()
def download(
    name: Annotated[str, typer.Argument(help="Dataset name, as listed by `fedkit data list`.")],
    root: Annotated[Path | None, typer.Option("--data", "--root", help=_DATA_HELP)] = None,
    mirror: Annotated[
        str | None,
        typer.Option("--mirror", help="Base URL tried before the canonical URLs."),
    ] = None,
) -> None:
    """Download a dataset's files from their canonical URLs and verify their checksums."""
    from fedkit.data.datasets.catalog import CATALOG, download_dataset

    if name not in CATALOG:
        typer.echo(f"error: unknown dataset {name!r}; known: {', '.join(CATALOG)}", err=True)
        raise typer.Exit(2)
    where, how = resolve_root(root)
    try:
        options = CommonOptions(mirror=mirror)
        paths = download_dataset(name, where, options)
    except (FedkitDataError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{name}: {len(paths)} file(s) verified in {where} ({how})")
