"""The justification harness on E-ReDial and the scripted-dialogue runner, end to end on small catalogs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

from chatbot.justify import TemplateJustifier
from chatbot.service import Chatbot
from eval.justification import evaluate_justifier, read_e_redial
from retrieval.catalog import load_catalog
from tests.conftest import shared_or_skip

SCRIPTS = Path(__file__).resolve().parents[1] / "eval" / "dialogues"


def test_e_redial_harness_with_the_template_baseline(settings, library, tmp_path: Path) -> None:  # noqa: ANN001
    cases, skipped = read_e_redial(shared_or_skip("e_redial/e_redial_explanations.json"))
    assert len(cases) + skipped == 418 and skipped == 15  # the 418 rewritten turns, 15 without a movie
    cases = cases[:12]
    wanted = {c.item_title for c in cases}
    rows = [json.loads(line) for line in shared_or_skip("redial/catalog/redial_catalog_merged.jsonl").open()]
    small = [r for r in rows if " ".join(r["title"].split()) in wanted]
    path = tmp_path / "ered.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in small))
    library.add(load_catalog(path, "ered"), progress=False)
    bot = Chatbot(settings, library=library, use_lm=False)
    report = evaluate_justifier(TemplateJustifier(), "template", bot.dialogue, "ered", cases, skipped, "e-redial",
                                progress=False)
    assert report.cases >= 10
    assert report.metrics["unsupported_per_100"] == 0.0
    assert 0.0 < report.metrics["bleu2"] < 1.0 and 0.0 < report.metrics["rouge_l"] < 1.0
    assert 0.0 < report.metrics["distinct2"] <= 1.0
    assert report.examples and all(e["justification"] for e in report.examples)


def test_eval_script_runs_product_scripts_and_writes_junit(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    scripts = [str(SCRIPTS / "16_products_price.yaml"), str(SCRIPTS / "18_products_exclude_brand.yaml")]
    result = subprocess.run([sys.executable, "-m", "chatbot", "eval-script", *scripts, "--no-lm", "--junit",
                             str(junit)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2/2 scripts passed" in result.stdout
    suite = ET.parse(junit).getroot()
    assert suite.get("failures") == "0" and int(suite.get("tests")) >= 8


def test_eval_script_fails_on_a_broken_expectation(tmp_path: Path) -> None:
    script = tmp_path / "bad.yaml"
    script.write_text(
        f"name: impossible\ncatalog: products\ncatalog_file: {SCRIPTS / 'products.csv'}\nturns:\n"
        "  - user: 'I need a sturdy phone under $300'\n    expect:\n      recommends_any_of: ['p-014']\n"
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("turns: []\n")
    result = subprocess.run([sys.executable, "-m", "chatbot", "eval-script", str(script), "--no-lm"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and "FAIL impossible" in result.stdout and "recommends_any_of" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "chatbot", "eval-script", str(broken), "--no-lm"],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and "non-empty 'turns'" in bad.stdout
