"""The install lines, the license and the citation say the same thing everywhere: one tested torch version (named
once in pyproject.toml, read by .ci/run), the Apache-2.0 text pyproject declares, and one citation of the paper in
CITATION.cff and the README's BibTeX."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
README = (ROOT / "README.md").read_text()
TORCH = PYPROJECT["tool"]["fastervlm"]["torch"]


def test_every_install_line_names_the_tested_torch() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", TORCH)
    texts = {path.name: path.read_text() for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"),
                                                       ROOT / "pyproject.toml", ROOT / ".ci" / "run"]}
    pins = {(name, pin) for name, text in texts.items() for pin in re.findall(r"torch==([\w.+]+)", text)}
    assert pins and {pin for _, pin in pins} == {TORCH}, pins
    assert f"python3 -m pip install torch=={TORCH} -e \".[test]\" && fastervlm demo" in README  # the set-up, as before
    assert f"python3 -m pip install torch=={TORCH} --index-url https://download.pytorch.org/whl/cpu" in README
    gpu = re.search(rf"^# GPU machine.*\n(python3 -m pip install torch=={re.escape(TORCH)}\b.*)$", README, re.M)
    assert gpu and "whl/cu12" in gpu[1]


def test_ci_installs_the_version_pyproject_names() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert '["tool"]["fastervlm"]["torch"]' in ci and '"torch==${TORCH_VERSION}" -e ".[test]"' in ci
    assert not re.search(r"torch==\d", ci)  # no second copy of the version


SECTIONS = ["1. Definitions.", "2. Grant of Copyright License.", "3. Grant of Patent License.", "4. Redistribution.",
            "5. Submission of Contributions.", "6. Trademarks.", "7. Disclaimer of Warranty.",
            "8. Limitation of Liability.", "9. Accepting Warranty or Additional Liability."]


def test_the_license_is_the_apache_2_0_text_pyproject_declares() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}
    assert text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    positions = [text.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License to your work." in text
    assert len(text.split()) > 1500  # the full text, not a pointer to it


def _bibtex(kind: str) -> dict[str, str]:
    entry = re.search(rf"@{kind}\{{\w+,\n(.*?)\n\}}", README, re.S)
    assert entry, f"no @{kind} entry in the README"
    return {key: " ".join(value.split()) for key, value in re.findall(r"(\w+)\s*=\s*\{(.*?)\},?\n", entry[1] + "\n", re.S)}


def test_citation_cff_and_the_readme_bibtex_cite_the_same_paper_and_software() -> None:
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["license"] == "Apache-2.0"
    assert cff["version"] == PYPROJECT["project"]["version"]
    paper = cff["preferred-citation"]
    assert paper["title"] == ("[CLS] Attention is All You Need for Training-Free Visual Token Pruning: "
                              "Make VLM Inference Faster")
    authors = [f"{a['family-names']}, {a['given-names']}" for a in paper["authors"]]
    assert authors == ["Zhang, Qizhe", "Cheng, Aosong", "Lu, Ming", "Zhuo, Zhiyong", "Wang, Minqi", "Cao, Jiajun",
                       "Guo, Shaobo", "She, Qi", "Zhang, Shanghang"]
    article = _bibtex("article")
    assert article["title"] == paper["title"] and article["author"].split(" and ") == authors
    assert article["year"] == str(paper["year"]) == "2024" and "2412.01818" in article["journal"] == paper["journal"]
    software = _bibtex("software")
    assert software["title"] == cff["title"] and software["version"] == cff["version"]
    assert software["license"] == cff["license"]
