"""`autoresearch report`: the morning report of a real night, in Markdown and as a page read in Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import make_fake_repo
from nightlab import night, night_lab
from test_cli import PNG_SIGNATURE, cli, one_sentence

from server.lab.loop import Lab
from server.show.report import Report, gather, time_split
from server.show.report_render import markdown
from server.store.history import RunRecord

SECTIONS = ["summary", "progress", "chain", "next", "failures", "compute", "checks"]
LINKS = {"progress": "p.png", "time": "t.png", "gains": "g.png"}  # where the Markdown points each picture


@pytest.fixture
def reported(repo: Path) -> tuple[Lab, dict[str, int], Report]:
    lab = night_lab(repo)
    ids = night(lab)
    return lab, ids, gather(lab.history)


def test_the_baseline_the_best_and_the_kept_chain_in_order(reported: tuple[Lab, dict[str, int], Report]) -> None:
    _, ids, report = reported
    assert report.baseline is not None and report.baseline.id == ids["baseline"]
    assert report.best is not None and report.best.id == ids["simpler"] and report.best.metric == 0.7
    assert [c.run.id for c in report.chain] == [ids[n] for n in ("baseline", "raise A", "raise B", "raise A more",
                                                                 "simpler")]  # fmt: skip
    raise_b = report.chain[2]
    changed = [line for line in raise_b.diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changed == ["-B = 0.0", "+B = 0.1"]
    assert raise_b.gain == pytest.approx(0.1) and raise_b.run.lesson == "B helps as much as A"


def test_near_misses_ideas_and_failures_come_from_the_history(reported: tuple[Lab, dict[str, int], Report]) -> None:
    _, ids, report = reported
    assert [r.id for r in report.near_misses] == [ids["near miss"], ids["worse"]]  # closest to the best first
    assert (ids["raise A"], "Next: try raising B too.") in report.ideas
    assert (ids["worse"], "it could be worth trying a warmup instead") in report.ideas
    assert [(f.status, f.count) for f in report.failures] == [("crash", 1)]
    assert "boom: a deliberate crash" in report.failures[0].reasons[0][0]


def test_a_forced_keep_is_flagged(reported: tuple[Lab, dict[str, int], Report]) -> None:
    _, ids, report = reported
    assert report.flagged == [f"run {ids['simpler']} was kept by force: same result, simpler code"]
    assert f"FLAG: run {ids['simpler']} was kept by force" in markdown(report, LINKS)


def test_the_time_split_accounts_for_every_run_and_the_idle_time(reported: tuple[Lab, dict[str, int], Report]) -> None:
    lab, _, report = reported
    runs = lab.history.runs()
    assert report.time.phases["training"] == pytest.approx(sum(r.training_seconds or 0.0 for r in runs))
    assert set(report.time.per_run) == {r.id for r in runs} and report.compute_hours > 0
    assert 0.0 <= report.time.idle <= report.time.span


def stamped(run_id: int, start: str, end: str) -> RunRecord:
    return RunRecord(id=run_id, commit="c", parent="p", description="d", status="ok", started_at=start, ended_at=end)


def test_runs_of_several_slots_overlap_and_only_the_gaps_are_idle() -> None:
    day = "2026-01-01T00:00:"
    runs = [stamped(1, day + "00+00:00", day + "10+00:00"), stamped(2, day + "05+00:00", day + "20+00:00"),
            stamped(3, day + "30+00:00", day + "40+00:00")]  # fmt: skip
    split = time_split(runs, 0.0)
    assert (split.span, split.idle) == (40.0, 10.0)


def test_markdown_report_writes_its_pictures_beside_it(reported: tuple[Lab, dict[str, int], Report], repo: Path,
                                                      tmp_path: Path) -> None:  # fmt: skip
    out = cli(repo, "report", "--out", str(tmp_path / "night.md"))
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "night.md").read_text()
    for name in ("progress", "time", "gains"):
        assert f"](night-{name}.png)" in text
        assert (tmp_path / f"night-{name}.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "## Kept changes, in order" in text and "SNAPSHOT" not in text


def test_a_running_tag_is_reported_as_a_snapshot(repo: Path) -> None:
    lab = night_lab(repo)
    night(lab)
    active = lab.start_run("in flight")  # recorded as running until drive collects it
    try:
        report = gather(lab.history)
    finally:
        lab.drive(active)
    assert report.snapshot is not None and "still in flight" in report.snapshot
    assert markdown(report, LINKS).startswith("# SNAPSHOT: the night is still")


def test_an_unknown_tag_is_one_sentence(repo: Path) -> None:
    assert "no history for tag 'nosuch'" in one_sentence(cli(repo, "report", "--tag", "nosuch"))


def chromium_dom(page: Path) -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("chromium is not installed (bash .ci/run installs it with apt)")
    argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000", "--dump-dom",
            page.as_uri()]  # fmt: skip
    return subprocess.run(argv, capture_output=True, timeout=120, stdin=subprocess.DEVNULL).stdout.decode()


# Once the page has loaded, the width each picture decoded to, in the DOM for --dump-dom to show.
PROBE = ("<script>addEventListener('load', () => { document.body.dataset.decoded = [...document.images]"
         ".map(i => i.complete ? i.naturalWidth : 0).join(','); });</script>")  # fmt: skip


def test_html_report_is_self_contained_and_every_picture_decodes(tmp_path: Path) -> None:
    repo = make_fake_repo(tmp_path / "repo")
    night(night_lab(repo))
    page = tmp_path / "night.html"
    out = cli(repo, "report", "--html", "--out", str(page))
    assert out.returncode == 0, out.stderr
    html = page.read_text()
    assert re.findall(r'<section id="([a-z]+)"', html) == SECTIONS
    assert 'src="http' not in html and 'href="' not in html  # nothing to fetch: the pictures are inline
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"))
    decoded = re.search(r'data-decoded="([0-9,]*)"', chromium_dom(probed))
    assert decoded is not None and len(decoded[1].split(",")) == 3
    assert all(int(width) > 300 for width in decoded[1].split(","))
