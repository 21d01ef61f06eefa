"""pipeline.report.page: the results page, rendered from a report folder's own files only."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from pipeline.paths import REPO
from pipeline.report import page

COMMITTED = sorted(p.parent.name for p in (REPO / "reports").glob("*/claims.json"))


@pytest.fixture
def folder(tmp_path):
    """A copy of a committed report folder (its page removed)."""
    dest = tmp_path / "builtin-quick"
    shutil.copytree(REPO / "reports" / "builtin-quick", dest)
    (dest / page.PAGE).unlink(missing_ok=True)
    return dest


def test_the_page_is_rendered_from_the_folders_files(folder):
    text = page.render(folder)
    claims = json.loads((folder / "claims.json").read_text())
    for e in claims["claims"]:
        assert f"| {e['id']} | {e['kind']} |" in text and f"**{e['status']}**" in text
    main = (folder / "tables" / "main.md").read_text().splitlines()
    assert all(line in text for line in main if line.startswith("|"))  # the table as written, intervals included
    assert main[0] not in text  # its provenance header is given once, in Provenance, as a list
    assert f"- git commit: `{claims['provenance']['git_commit']}`" in text
    for name in page.FIGURES:
        assert f"](figures/{name}.png)" in text
    pretrain = json.loads((folder / "metrics" / "pretrain.json").read_text())
    assert f"train seconds: {pretrain['train_seconds']:.1f} s" in text
    assert "| evaluate | [metrics/evaluate.json](metrics/evaluate.json) | no time recorded |" in text
    assert "[ablations/network.md](ablations/network.md)" in text and "**Finding.**" in text
    assert f"device_name {pretrain['runtime']['device_name']}" in text


def test_the_page_follows_the_files_and_nothing_else(folder):
    before = page.render(folder)
    assert page.render(folder) == before  # no clock, no environment
    doc = json.loads((folder / "claims.json").read_text())
    doc["claims"][0]["status"] = "FAIL"
    (folder / "claims.json").write_text(json.dumps(doc))
    (folder / "tables" / "main.md").write_text((folder / "tables" / "main.md").read_text().replace("pretrained ",
                                                                                                    "PRETRAINED "))
    after = page.render(folder)
    assert f"| {doc['claims'][0]['id']} |" in after and "**FAIL**" in after.split("## Headline")[0]
    assert "| PRETRAINED " in after and after != before


def test_the_page_shows_the_findings_per_domain_and_the_gains_over_bases():
    text = page.render(REPO / "reports" / "cifar100-full")
    per = text.split("### Findings per domain")[1].split("### Main gains")[0]
    assert "| C3 | every domain | VA +0.51 dB [+0.46, +0.56], p 1: INCONCLUSIVE; VP +0.86 dB [+0.82, +0.90]" in per
    gains = text.split("### Main gains: over seeds and over bases")[1].split("## Headline")[0]
    assert "3 other bases (pretrained 10 epochs" in gains and "| sam − lora | VA |" in gains
    assert "| sam − pretrained | VA | +0.42 dB [+0.38, +0.47] | +0.42 dB [+0.20, +0.64] | +0.93 dB |" in gains


def test_one_base_only_is_said_on_the_page(folder):
    doc = json.loads((folder / "claims.json").read_text())
    doc.pop("gains", None)  # a claims.json from before the gains (the committed quick one has them now)
    (folder / "claims.json").write_text(json.dumps(doc))
    assert "### Main gains" not in page.render(folder)  # a claims.json from before the gains: no section
    doc["gains"] = {"sparsity": "0.01", "sparsity_note": "γ = 1 %", "vs": {},
                    "bases": {"combined": False, "reason": "one base only: the run has no bases study"}}
    (folder / "claims.json").write_text(json.dumps(doc))
    assert "*Over seeds and bases*: none, one base only: the run has no bases study" in page.render(folder)
    doc["gains"] = {"vs": {}}
    (folder / "claims.json").write_text(json.dumps(doc))
    with pytest.raises(page.PageError, match="gains values malformed"):
        page.render(folder)


@pytest.mark.parametrize("name", ["claims.json", "tables/main.md", "figures/psnr_vs_bytes.png",
                                  "metrics/pretrain.json"])
def test_a_missing_file_is_one_line_naming_it(folder, name):
    (folder / name).unlink()
    with pytest.raises(page.PageError, match="not found") as err:
        page.render(folder)
    assert str(folder / name) in str(err.value) and len(str(err.value).splitlines()) == 1


def test_the_command_writes_the_page_or_exits_2_in_one_line(folder):
    done = subprocess.run([sys.executable, "-m", "pipeline.report.page", str(folder)], capture_output=True, text=True,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert (folder / page.PAGE).read_text() == page.render(folder)
    (folder / "claims.json").write_text("{not json")
    done = subprocess.run([sys.executable, "-m", "pipeline.report.page", str(folder)], capture_output=True, text=True,
                          cwd=REPO)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "claims.json is not JSON" in done.stderr


def test_the_pages_figures_are_the_ones_the_stage_draws():
    from types import SimpleNamespace

    from pipeline.report import figures
    params = SimpleNamespace(domains=SimpleNamespace(names=[]))  # drawing is deferred: the names suffice
    assert sorted(figures.figures(None, None, params)) == sorted(page.FIGURES)


@pytest.mark.parametrize("run", COMMITTED)
def test_every_committed_page_is_up_to_date(run):
    """A committed folder's page is what its files render (regenerate: python -m pipeline.report.page)."""
    folder = REPO / "reports" / run
    assert (folder / page.PAGE).read_text() == page.render(folder), f"regenerate reports/{run}/README.md"
