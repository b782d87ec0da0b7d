"""The pipeline section of the bench runs and reports every contender (quick sizes)."""

from __future__ import annotations

import io

from shardflow.bench.pipeline import (
    BARE,
    BOUNDEDQ,
    PIPE,
    PIPE_ORDERED,
    SIMPLEQ,
    pipeline_section,
    run_boundedqueue,
    run_pipeline,
    run_pipeline_ordered,
    run_simplequeue,
)


def test_every_contender_moves_every_item() -> None:
    for run in (run_simplequeue, run_boundedqueue, run_pipeline, run_pipeline_ordered):
        moved, seconds = run(3000)
        assert moved == 3000
        assert seconds > 0


def test_the_section_reports_rates_ratios_and_peak_rss() -> None:
    out = io.StringIO()
    report, targets = pipeline_section(items=4000, repeats=1, quick=True, out=out)
    text = out.getvalue()
    for name in (BARE, SIMPLEQ, BOUNDEDQ, PIPE, PIPE_ORDERED):
        assert name in text
        assert report["medians"][name] > 0
    assert report["ratios_vs_bare"][BARE] == 1.0
    for kind in ("pipeline", "simplequeue"):
        runs = report["rss"][kind]
        assert [r["items"] for r in runs] == [200, 2000]
        assert all(r["moved"] == r["items"] and r["peak_kb"] > 0 for r in runs)
    assert {t.unit for t in targets} == {"M/s", "MB"}
