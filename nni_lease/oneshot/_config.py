"""Settings and result of the one-shot workflow (:mod:`nni_lease.oneshot`), each checked on creation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from art_fisher.utils import check_bool, check_choice, check_int, check_real
from nni_lease._data import DatasetName, check_dataset
from nni_lease._limits import MAX_BATCH_SIZE, MAX_CELLS, MAX_EPOCHS, MAX_LIMIT, MAX_NODES, MAX_RATE, MAX_SEED, MAX_WIDTH
from nni_lease._spaces import SPACE_DEFAULTS, SpaceName


def check_data(dataset: str, data_dir: str | None) -> None:
    """Check a data set name and its folder before any work (``nni_lease._data.check_dataset``)."""
    check_dataset(dataset, data_dir)


@dataclass(frozen=True)
class SearchConfig:
    """Data, space and training settings of a one-shot search.

    LeaSE's own settings are in :class:`~nni_lease.core.LeaseConfig`.

    Parameters
    ----------
    dataset : {"digits", "mnist", "cifar10"}
        Data set (``"digits"``: scikit-learn's embedded 8×8 digits; nothing is downloaded).
    data_dir : str or None
        Folder of the MNIST files or the CIFAR-10 python batches (needed for ``"mnist"`` and ``"cifar10"``).
    seed : int
        Seed of the splits, the space's initialisation and the shuffling.
    limit : int or None
        Use only this many samples per split.
    epochs : int
        Search epochs.
    limit_batches : int or None
        Training batches per epoch (``None``: all).
    batch_size : int
        Batch size of both loaders.
    learning_rate : float
        The explainer's weights (the evaluator's Adam).
    arc_learning_rate : float
        The architecture weights (DARTS's Adam).
    width, cells, nodes : int or None
        The space's channels, cells and nodes per cell (the same arguments of
        :class:`~nni_lease.LeaseCellSpace`; :class:`~nni_lease.DartsSpace` takes ``width`` and ``cells``,
        and ``nodes`` must be 4). ``None``: the space's default (``nni_lease._spaces.SPACE_DEFAULTS``).
    progress : bool
        Show Lightning's progress bar.
    space : {"lease_cell", "darts"}
        The search space (``nni_lease._spaces.SPACES``).

    Raises
    ------
    TypeError
        For a value of the wrong type, naming the field.
    ValueError
        For a bad value, naming the field.
    """

    dataset: DatasetName = "digits"
    data_dir: str | None = None
    seed: int = 0
    limit: int | None = None
    epochs: int = 5
    limit_batches: int | None = None
    batch_size: int = 64
    learning_rate: float = 3e-3
    arc_learning_rate: float = 3e-4
    width: int | None = None
    cells: int | None = None
    nodes: int | None = None
    progress: bool = False
    space: SpaceName = "lease_cell"

    def __post_init__(self) -> None:
        check_choice(self.space, "space", SpaceName)
        for name, default in SPACE_DEFAULTS[self.space].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        check_data(self.dataset, self.data_dir)
        check_int(self.seed, "seed", low=0, high=MAX_SEED)
        for name, high in (
            ("epochs", MAX_EPOCHS),
            ("batch_size", MAX_BATCH_SIZE),
            ("width", MAX_WIDTH),
            ("cells", MAX_CELLS),
            ("nodes", MAX_NODES),
        ):
            check_int(getattr(self, name), name, low=1, high=high)
        for name in ("limit", "limit_batches"):
            check_int(getattr(self, name), name, low=1, high=MAX_LIMIT, optional=True)
        check_real(self.learning_rate, "learning_rate", low=0.0, high=MAX_RATE, low_open=True)
        check_real(self.arc_learning_rate, "arc_learning_rate", low=0.0, high=MAX_RATE, low_open=True)
        check_bool(self.progress, "progress")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SearchConfig:
        """Build from a mapping of field names (e.g. read from JSON); unknown names are a ValueError."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown search setting(s) {unknown}.")
        return cls(**values)


@dataclass(frozen=True)
class RetrainConfig:
    """Settings of :func:`retrain_architecture` (Adam on cross entropy, from scratch).

    Parameters
    ----------
    epochs, batch_size : int
        Training length and batch size.
    learning_rate : float
        Adam's learning rate.
    seed : int
        Seed of the initialisation and the shuffling.
    data_dir : str or None
        CIFAR-10 folder (``None``: the one recorded by the search).
    progress : bool
        Show a progress bar.
    """

    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 0
    data_dir: str | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        check_int(self.epochs, "epochs", low=1, high=MAX_EPOCHS)
        check_int(self.batch_size, "batch_size", low=1, high=MAX_BATCH_SIZE)
        check_int(self.seed, "seed", low=0, high=MAX_SEED)
        check_real(self.learning_rate, "learning_rate", low=0.0, high=MAX_RATE, low_open=True)
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise TypeError(f"data_dir must be None or a str path; got {type(self.data_dir).__name__}.")
        check_bool(self.progress, "progress")


@dataclass(frozen=True)
class SearchResult:
    """What :func:`search_oneshot` returns.

    Attributes
    ----------
    architecture : dict
        Choice label → chosen value (``export_top_models(formatter="dict")[0]``).
    record : dict
        The content of ``architecture.json``.
    rows : list of dict
        One row per epoch of the logged metrics (strings, as in ``metrics.csv``).
    seconds : float
        Wall-clock time of the search.
    output : Path
        The output folder.
    """

    architecture: dict
    record: dict
    rows: list = field(default_factory=list)
    seconds: float = 0.0
    output: Path = Path(".")
