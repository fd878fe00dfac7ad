"""`fairbench report` end to end on two tiny sweeps made with the CLI on ml100k."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fairbench.report.stats import holm
from tests.helpers.cli import fairbench

TINY = ["trainer.max_epochs=1", "trainer.progress=false", "logger=none"]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Sweep A: ERM and Reweight, seeds 0 and 1; sweep B: DRORec, seeds 0 and 1."""
    out = tmp_path_factory.mktemp("sweeps")
    a, b = out / "a", out / "b"
    for sweep, methods in ((a, "erm,reweight"), (b, "drorec")):
        done = fairbench(
            "train", "-m", f"method={methods}", "seed=0,1", *TINY, f"hydra.sweep.dir={sweep}", out=out
        )
        assert done.returncode == 0, done.stderr[-3000:]
    return out, a, b


def job_values(sweep, method):
    """(metrics.json of each seed, per-user test recall@20 averaged over seeds) of one method's jobs."""
    metrics, rows = [], []
    for job in sorted(sweep.glob("*/metrics.json")):
        overrides = (job.parent / ".hydra" / "overrides.yaml").read_text()
        if f"method={method}" in overrides:
            metrics.append(json.loads(job.read_text()))
            frame = pd.read_parquet(job.parent / "per_user.parquet")
            test = frame[(frame["split"] == "test") & (frame["k"] == 20)]
            rows.append(test.set_index("row")["recall"].astype(np.float64))
    return metrics, pd.concat(rows, axis=1).mean(axis=1)


@pytest.mark.slow
def test_report_tables_tests_and_figures_from_cli_sweeps(sweeps):
    out, a, b = sweeps
    report_dir = out / "report"
    done = fairbench(
        "report",
        str(a),
        str(b),
        "--by",
        "model,method",
        "--metric",
        "recall@20",
        "--baseline",
        "method=erm",
        "--out",
        str(report_dir),
        "--wandb",
        out=out,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(report_dir / "report.csv")
    assert list(table["configuration"]) == ["alpharec / erm", "alpharec / reweight", "alpharec / drorec"]
    assert list(table["seeds"]) == [2, 2, 2]

    erm_metrics, erm_rows = job_values(a, "erm")
    for label, sweep, method in (("alpharec / reweight", a, "reweight"), ("alpharec / drorec", b, "drorec")):
        row = table.set_index("configuration").loc[label]
        metrics, rows = job_values(sweep, method)
        values = [m["test/pop/cv@20"] for m in metrics]
        assert row["pop/cv@20"] == pytest.approx(np.mean(values))
        assert row["pop/cv@20 std"] == pytest.approx(np.std(values, ddof=1))
        assert row["pairs"] == len(erm_rows) == len(rows)
        assert row["p_t"] == pytest.approx(stats.ttest_rel(rows, erm_rows.loc[rows.index]).pvalue, rel=1e-7)
        assert row["p_wilcoxon"] == pytest.approx(
            stats.wilcoxon(rows, erm_rows.loc[rows.index]).pvalue, rel=1e-9
        )
        recall = np.mean([m["test/recall@20"] for m in metrics])
        assert row["delta"] == pytest.approx(recall / np.mean([m["test/recall@20"] for m in erm_metrics]) - 1)
    np.testing.assert_allclose(table["p_t_holm"][1:], holm(table["p_t"][1:]))
    assert table["pareto"].any()

    markdown = (report_dir / "report.md").read_text()
    assert (
        "alpharec / erm (baseline)" in markdown
        and "p t-test (Holm)" in markdown
        and "method=drorec" in markdown
    )
    assert json.loads((report_dir / "report.json").read_text())["baseline"] == "alpharec / erm"
    for name in ("pareto.png", "pareto.svg", "group_utilities/alpharec_drorec.png"):
        assert (report_dir / name).stat().st_size > 1000, name
    (wandb_file,) = report_dir.glob("wandb/offline-run-*/run-*.wandb")
    assert b"report" in wandb_file.read_bytes()


@pytest.mark.slow
def test_report_mistakes_give_one_message(sweeps):
    out, a, _ = sweeps
    for args, expected in (
        (["--baseline", "method=groupdro"], "matched none"),
        (["--by", "model,nosuchkey"], "--by nosuchkey"),
        (["--metric", "recal@20"], "no job has recal@20"),
    ):
        done = fairbench("report", str(a), *args, "--out", str(out / "bad"), out=out)
        assert done.returncode == 2 and expected in done.stderr and "Traceback" not in done.stderr, (
            done.stderr
        )
    assert fairbench("report", str(out / "missing"), out=out).returncode == 2


@pytest.mark.slow
def test_report_puts_the_published_numbers_beside_with_relative_changes(sweeps):
    out, a, b = sweeps
    report_dir = out / "paper"
    args = ["--by", "method,method.groups", "--baseline", "method=erm", "--paper", "bifair-table2"]
    done = fairbench("report", str(a), str(b), *args, "--out", str(report_dir), out=out)
    assert done.returncode == 0, done.stderr[-3000:]
    paper = pd.DataFrame(json.loads((report_dir / "report.json").read_text())["paper"])
    table = pd.read_csv(report_dir / "report.csv").set_index("configuration")
    row = paper[(paper["Configuration"] == "reweight / popularity") & (paper["Metric"] == "recall@20")].iloc[
        0
    ]
    # BiFair Table 2, Movies, popularity groups: Reweight 0.2017 vs AlphaRec (no method) 0.2034
    assert row["Paper row"] == "Reweight" and row["Paper (movies)"] == "0.2017"
    assert row["Δ paper"] == f"{100 * (0.2017 / 0.2034 - 1):+.1f}%"
    mine = table.loc["reweight / popularity", "recall@20"] / table.loc["erm / -", "recall@20"] - 1
    assert row["Δ fairbench"] == f"{100 * mine:+.1f}%"
    assert set(paper["Metric"]) == {"recall@20", "ndcg@20", "hr@20", "pop/cv@20", "pop/min@20"}  # its groups
    assert "Different dataset" in (report_dir / "report.md").read_text()


@pytest.mark.slow
def test_report_writes_a_results_document_that_says_how_it_was_made(sweeps):
    out, a, b = sweeps
    (out / "notes").mkdir(exist_ok=True)
    preface, discussion = out / "notes" / "preface.md", out / "notes" / "discussion.md"
    preface.write_text("## Protocol\n\nOne epoch per run.\n")
    discussion.write_text("## What the table says\n\nDRORec is on the front.\n")
    document = out / "docs" / "results.md"
    args = ["--by", "method", "--baseline", "method=erm", "--out", str(out / "docs" / "results")]
    done = fairbench(
        "report", str(a), str(b), *args, "--preface", str(preface), "--discussion", str(discussion),
        "--document", str(document), out=out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    text = document.read_text()
    command = f"fairbench report {a} {b} {' '.join(args)} --preface {preface}"
    assert command in text  # the document names the command that remakes it
    assert "fairbench train -m method=erm,reweight" in text  # and the sweeps' commands
    order = [text.index(s) for s in ("## Protocol", "| erm (baseline)", "## Figures", "## What the table")]
    assert order == sorted(order)
    links = re.findall(r"\]\(([^)]+\.png)\)", text)
    assert "results/pareto.png" in links and all((document.parent / link).is_file() for link in links)
    assert not (out / "docs" / "results" / "report.md").exists()  # one markdown file, the document
    assert (out / "docs" / "results" / "report.csv").is_file()

    missing = fairbench("report", str(a), "--preface", str(out / "nope.md"), out=out)
    assert missing.returncode == 2 and "--preface" in missing.stderr and "Traceback" not in missing.stderr
