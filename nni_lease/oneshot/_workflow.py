"""The one-shot workflow as a typed Python API: search with :class:`~nni_lease.oneshot.LeaSE`, then retrain.

:func:`search_oneshot` runs ``NasExperiment(LeaseCellSpace(...), Classification(...), LeaSE(...)).run()``
and writes, into its output folder:

- ``architecture.json`` (:data:`ARCHITECTURE_FILE`): the exported architecture plus what is needed to
  rebuild it (data set, space, LeaSE settings);
- ``metrics.csv`` (:data:`METRICS_FILE`): one row per epoch of the metrics LeaSE logs;
- ``curves.png`` (:data:`CURVES_FILE`): those curves.

:func:`retrain_architecture` trains an exported architecture from scratch and writes ``retrain.json``
(:data:`RETRAIN_FILE`). Every setting is checked (:class:`SearchConfig`, :class:`RetrainConfig`, both in
:mod:`nni_lease.oneshot`,
:class:`~nni_lease.core.LeaseConfig`, the output path, the data) before any folder is created or
any training starts. ``nni-lease search --mode oneshot`` / ``nni-lease retrain`` and the HPO trials of
:mod:`nni_lease.runtime` are thin callers of these functions.

Examples
--------
>>> from nni_lease.oneshot._workflow import SearchConfig, search_oneshot, retrain_architecture   # doctest: +SKIP
>>> result = search_oneshot("runs/lease", config=SearchConfig(epochs=5))               # doctest: +SKIP
>>> retrain_architecture(result.record, config=RetrainConfig(epochs=20))               # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from art_fisher.utils import atomic_write, check_output_dir
from nni_lease._data import make_dataset
from nni_lease._spaces import SPACES, build_space, build_space_on_meta, check_space_size, space_kwargs_for
from nni_lease.core._config import LeaseConfig
from nni_lease.oneshot._config import RetrainConfig, SearchConfig, SearchResult, check_data
from nni_lease.oneshot._lightning import METRICS, TrainingDivergedError
from nni_lease.oneshot._progress import EpochLogger
from nni_lease.oneshot._retrain import build_architecture, retrain
from nni_lease.oneshot._strategy import LeaSE

logger = logging.getLogger(__name__)

ARCHITECTURE_FILE = "architecture.json"
METRICS_FILE = "metrics.csv"
CURVES_FILE = "curves.png"
RETRAIN_FILE = "retrain.json"

#: Largest architecture.json read (a record is a few KB).
MAX_ARCHITECTURE_BYTES = 2**20


def check_output_file(path: str | Path) -> Path:
    """Check (without creating anything) that a file can be written at ``path``; returns it.

    Raises
    ------
    ValueError
        If ``path`` is a folder, or its folder does not exist or is not writable.
    """
    out = Path(path).expanduser()
    if out.is_dir():
        raise ValueError(f"output {str(out)!r} is a folder; give a file name.")
    parent = out.parent
    if not parent.is_dir():
        raise ValueError(f"output {str(out)!r} cannot be written: folder {str(parent)!r} does not exist.")
    check_output_dir(parent, name=f"the folder of output {str(out)!r}")
    return out


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`art_fisher.utils.atomic_write`)."""
    with atomic_write(path, text=True) as fh:
        fh.write(text)


def space_kwargs(config: SearchConfig, train: Any) -> dict[str, Any]:
    """Keyword arguments of ``config.space`` (``nni_lease._spaces.build_space``) for the training split."""
    channels, side, _ = train.input_shape
    # SearchConfig fills each None with the space's default
    assert config.width is not None and config.cells is not None and config.nodes is not None
    return space_kwargs_for(
        config.space,
        in_channels=int(channels),
        n_classes=int(train.n_classes),
        image_size=int(side),
        width=config.width,
        cells=config.cells,
        nodes=config.nodes,
    )


def _epoch_rows(lightning_csv: Path) -> list[dict[str, str]]:
    """Collapse Lightning's CSV (one row per logging call) into one row per epoch of LeaSE's metrics."""
    rows: dict[int, dict[str, str]] = {}
    if not lightning_csv.is_file():
        return []
    with lightning_csv.open() as fh:
        for row in csv.DictReader(fh):
            if row.get("epoch", "") == "":
                continue
            epoch = int(float(row["epoch"]))
            out = rows.setdefault(epoch, {"epoch": str(epoch)})
            for name in METRICS:
                if row.get(name, "") != "":
                    out[name] = row[name]
    return [rows[e] for e in sorted(rows)]


def _write_metrics(rows: list[dict[str, str]], path: Path) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["epoch", *METRICS], restval="")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write_text(path, buffer.getvalue())


def _plot_curves(rows: list[dict[str, str]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [
        (
            "loss (nats)",
            [
                "explainer/train_loss",
                "explainer/val_loss",
                "listener/train_loss",
                "listener/val_loss",
                "lease/objective",
            ],
        ),
        ("accuracy", ["explainer/train_acc", "explainer/val_acc", "listener/train_acc", "listener/val_acc"]),
        ("mean |δ| (input units)", ["explanation/mean_abs_delta"]),
    ]
    for ax, (ylabel, names) in zip(axes, panels, strict=True):
        for name in names:
            values = [float(r[name]) if r.get(name) else float("nan") for r in rows]
            ax.plot(epochs, values, marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def _datasets(dataset: str, root: str | None, seed: int, limit: int | None) -> tuple[Any, Any, Any]:

    return tuple(
        make_dataset(dataset, split, data_dir=root, seed=seed, limit=limit)  # type: ignore[return-value]
        for split in ("train", "val", "test")
    )


def load_splits(config: SearchConfig) -> tuple[Any, Any, Any]:
    """The train / val / test splits of ``config``'s data set (``nni_lease._data.make_dataset``)."""
    return _datasets(config.dataset, config.data_dir, config.seed, config.limit)


def search_oneshot(
    output: str | Path,
    *,
    config: SearchConfig = SearchConfig(),
    lease: LeaseConfig = LeaseConfig(),
    plot: bool = True,
) -> SearchResult:
    """One-shot LeaSE search on ``config.space`` (``nni_lease._spaces.SPACES``); writes the files listed above.

    Parameters
    ----------
    output : str or Path
        Output folder (created after every check passed).
    config : SearchConfig
        Data, space and training settings.
    lease : LeaseConfig
        LeaSE's settings.
    plot : bool
        Also draw ``curves.png``.

    Returns
    -------
    SearchResult

    Raises
    ------
    ValueError
        For a bad argument, output path or data file (nothing created);
        :class:`~nni_lease.oneshot.TrainingDivergedError` when a loss or an architecture weight
        becomes NaN or infinite (what the search created is removed).
    """
    if not isinstance(config, SearchConfig):
        raise TypeError(f"config must be a SearchConfig; got {type(config).__name__}.")
    if not isinstance(lease, LeaseConfig):
        raise TypeError(f"lease must be a LeaseConfig; got {type(lease).__name__}.")
    out = check_output_dir(output, "output")
    train, val, _ = load_splits(config)

    import torch
    from nni.nas.evaluator.pytorch import Classification, DataLoader
    from nni.nas.experiment import NasExperiment
    from pytorch_lightning.loggers import CSVLogger

    kwargs = space_kwargs(config, train)
    strategy = LeaSE(config=lease, arc_learning_rate=config.arc_learning_rate)
    check_space_size(config.space, kwargs)  # before anything is created
    before = set(out.iterdir()) if out.is_dir() else None
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    space = build_space(config.space, **kwargs)
    evaluator = Classification(
        learning_rate=config.learning_rate,
        train_dataloaders=DataLoader(train, batch_size=config.batch_size, shuffle=True),
        val_dataloaders=DataLoader(val, batch_size=config.batch_size, shuffle=True),
        num_classes=train.n_classes,
        max_epochs=config.epochs,
        limit_train_batches=config.limit_batches if config.limit_batches else 1.0,
        logger=CSVLogger(save_dir=str(out), name="lightning_logs", version=0),
        enable_checkpointing=False,
        enable_progress_bar=config.progress,
        enable_model_summary=False,
        callbacks=[] if config.progress else [EpochLogger()],
    )
    experiment = NasExperiment(space, evaluator, strategy)
    experiment.config.experiment_working_directory = str(out / "nni-experiments")
    start = time.perf_counter()
    diverged = False
    try:
        experiment.run()
        seconds = time.perf_counter() - start
        architecture = experiment.export_top_models(formatter="dict")[0]
    except TrainingDivergedError:
        diverged = True
        raise
    finally:
        experiment.stop()  # otherwise NNI stops it (and logs) at interpreter exit
        if diverged:  # no architecture from NaN weights: leave nothing behind
            _remove_created(out, before)
    record = {
        "architecture": architecture,
        "mode": "oneshot",
        "dataset": config.dataset,
        "data_dir": config.data_dir,
        "seed": config.seed,
        "space": {"name": SPACES[config.space], "kwargs": kwargs},
        "strategy": {
            "name": "LeaSE",
            "epochs": config.epochs,
            "arc_learning_rate": config.arc_learning_rate,
            **lease.as_dict(),
        },
        "search": dataclasses.asdict(config),
        "search_seconds": seconds,
    }
    _atomic_write_text(out / ARCHITECTURE_FILE, json.dumps(record, indent=2))
    rows = _epoch_rows(out / "lightning_logs" / "version_0" / "metrics.csv")
    _write_metrics(rows, out / METRICS_FILE)
    if plot:
        _plot_curves(rows, out / CURVES_FILE, f"LeaSE search on {config.dataset} (gamma={lease.gamma})")
    logger.info("One-shot search took %.1f s; architecture %s.", seconds, architecture)
    return SearchResult(architecture=architecture, record=record, rows=rows, seconds=seconds, output=out)


def _remove_created(out: Path, before: set[Path] | None) -> None:
    """Remove what a failed search created in ``out``: the folder itself when it was new (``before`` None)."""
    import shutil

    created = [out] if before is None else [p for p in out.iterdir() if p not in before]
    for path in created:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def load_architecture(path: str | Path) -> dict[str, Any]:
    """Read and check an ``architecture.json`` written by :func:`search_oneshot`.

    Raises
    ------
    ValueError
        If the file is missing, is not JSON, or is not such a record (e.g. a JSON list).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"architecture file {str(p)!r} not found.")
    if p.stat().st_size > MAX_ARCHITECTURE_BYTES:
        raise ValueError(
            f"architecture file {str(p)!r} has {p.stat().st_size} bytes; an architecture record has "
            f"a few KB (at most {MAX_ARCHITECTURE_BYTES} are read)."
        )
    try:
        record = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        why = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise ValueError(f"architecture file {str(p)!r} is not valid JSON: {why}") from None
    _check_record(record, str(p))
    return record


def _check_record(record: Any, source: str) -> None:
    expected = "a JSON object with 'architecture' and 'space' written by `nni-lease search`"
    if not isinstance(record, dict):
        raise ValueError(f"{source} is not an architecture record ({expected}); got a JSON {type(record).__name__}.")
    space = record.get("space")
    if (
        not isinstance(space, dict)
        or space.get("name") not in ("LeaseCellSpace", "DartsSpace")
        or not isinstance(space.get("kwargs"), dict)
        or not isinstance(record.get("architecture"), dict)
    ):
        raise ValueError(f"{source} is not an architecture record ({expected}).")


def retrain_architecture(
    architecture: str | Path | dict[str, Any],
    *,
    config: RetrainConfig = RetrainConfig(),
    output: str | Path | None = None,
) -> dict[str, Any]:
    """Train a searched architecture from scratch, write the result JSON, return it.

    Parameters
    ----------
    architecture : str, Path or dict
        An ``architecture.json`` path or its content (:func:`search_oneshot`'s ``record``).
    config : RetrainConfig
        Training settings.
    output : str, Path or None
        The result file; default: ``retrain.json`` beside the architecture file (required for a dict).

    Returns
    -------
    dict
        ``architecture``, ``dataset``, ``epochs``, ``seed``, ``test_accuracy``, ``test_loss``,
        ``val_accuracy``, ``n_parameters``, ``seconds``.

    Raises
    ------
    ValueError
        For a bad record, output path, setting or architecture (before training).
    """
    if not isinstance(config, RetrainConfig):
        raise ValueError(f"config must be a RetrainConfig; got {type(config).__name__}.")
    if isinstance(architecture, dict):
        record = architecture
        _check_record(record, "architecture")
        if output is None:
            raise ValueError("output must name the result file when architecture is given as a dict.")
    else:
        record = load_architecture(architecture)
        if output is None:
            output = Path(architecture).expanduser().with_name(RETRAIN_FILE)
    out = check_output_file(output)
    dataset = record.get("dataset", "digits")
    root = config.data_dir or record.get("data_dir")
    check_data(dataset, root)
    train, val, test = _datasets(dataset, root, int(record.get("seed", 0)), None)

    import torch

    torch.manual_seed(config.seed)
    name, kwargs = record["space"]["name"], record["space"]["kwargs"]
    if name == "LeaseCellSpace":  # the chosen network's size from the sizes alone, before any module is built
        check_space_size(name, kwargs, architecture=record["architecture"])
    # The space on the meta device (no memory): only the chosen network is ever allocated, after its size check.
    space = build_space_on_meta(name, check_size=False, **kwargs)
    build_architecture(space, record["architecture"], seed=config.seed)  # checks the architecture first
    result = retrain(
        space,
        record["architecture"],
        train,
        test,
        val=val,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=config.seed,
        progress=config.progress,
    )
    summary = {
        "architecture": record["architecture"],
        "dataset": dataset,
        "epochs": config.epochs,
        "seed": config.seed,
        **result.as_dict(),
    }
    _atomic_write_text(out, json.dumps(summary, indent=2))
    return summary
