"""The migration plan: three phases, risk order, what each step changes."""

from __future__ import annotations

from pathlib import Path

from corridor.inventory.findings import Finding, ScanResult, Skipped
from corridor.inventory.plan import PHASES, build_plan, plan_html, plan_markdown
from corridor.inventory.risk import assess_all, load_policy
from tests.inventory.corpus import Expected
from tests.inventory.test_risk import EXAMPLE_POLICY


def _plan(result: ScanResult) -> tuple:
    policy = load_policy(EXAMPLE_POLICY)
    assets = assess_all(result.findings, policy)
    return build_plan(assets, result.skipped, policy.crqc_years), assets


def test_corpus_plan_has_three_phases_in_risk_order(
        corpus_scan: tuple[ScanResult, list[Expected]]) -> None:
    plan, assets = _plan(corpus_scan[0])
    for number in (1, 2, 3):
        steps = plan.phase(number)
        assert steps, f"phase {number} is empty"
        assert [s.score for s in steps] == sorted((s.score for s in steps), reverse=True)
    phase1 = {s.title for s in plan.phase(1)}
    assert "retire RSA-1024" in phase1 and "retire SHA-1" in phase1
    phase2 = plan.phase(2)
    assert phase2[0].level == "critical"
    swan = next(s for s in phase2 if any("swanctl" in w for w in s.locations)
                and "key exchange" in s.title)
    assert "ke1_mlkem768" in swan.change and "ppk_required" in swan.change
    assert any("mlkem768x25519" in s.change for s in phase2)
    phase3 = plan.phase(3)
    assert {s.title for s in phase3} <= {"QKD keys for roadside-infrastructure",
                                         "QKD keys for corridor-kms"}
    # Every Shor-broken asset is covered by a phase-2 step.
    covered = {w for s in phase2 for w in s.locations}
    assert all(a.finding.where in covered for a in assets
               if a.vulnerability == "shor-broken")


def test_markdown_and_html_render_the_same_steps(
        corpus_scan: tuple[ScanResult, list[Expected]]) -> None:
    plan, _ = _plan(corpus_scan[0])
    markdown, page = plan_markdown(plan), plan_html(plan)
    for title in PHASES:
        assert f"## {title}" in markdown and title in page
    for step in plan.steps:
        assert f"**{step.title}**" in markdown
    assert page.startswith("<!doctype html>") and page.count("<li><b>") == len(plan.steps)


def test_skipped_items_become_a_phase1_step(tmp_path: Path) -> None:
    finding = Finding("key", str(tmp_path / "a.pem"), "RSA", "test", line=1,
                      key_size_bits=2048)
    result = ScanResult([finding], [Skipped(str(tmp_path / "b.pem"), "binary data")])
    plan, _ = _plan(result)
    step = next(s for s in plan.phase(1) if s.title == "resolve the items the scan skipped")
    assert step.locations == [str(tmp_path / "b.pem")]
