"""The docs a newcomer reads: a short README, links that lead somewhere, and a config reference
and editor schema that say what the config models say (both generated from them)."""

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from components.config import PROJECT, ConfigError, parse
from components.config.base import _Model
from tests import docs
from tools import config_reference
from tools import mock_engine as harness

README_MAX_LINES = 200


def test_the_readme_stays_short():
    lines = docs.README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_the_readme_opens_with_how_to_run_and_test_it():
    text = docs.README.read_text()
    first_section = text.index("\n## ")
    for command in ("pulumi up -s local", "```sh\nmake test\n```", "`make check` runs the unit and program tiers"):
        assert 0 <= text.find(command) < first_section, command


# --- links ----------------------------------------------------------------------------------------

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """Markdown without its code, where a bracket is no link."""
    return CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lowercased, punctuation dropped, spaces as '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        if m := re.match(r"^#{1,6} (.+?)#*$", line):
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    out = []
    for target in LINK.findall(prose(path.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            out.append(f"{path.name}: {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            out.append(f"{path.name}: {target}: no such heading in {dest.name}")
    return out


@pytest.mark.parametrize("path", docs.files(), ids=lambda p: p.name)
def test_every_relative_link_resolves(path):
    assert broken_links(path) == []


def test_a_broken_link_or_anchor_is_caught(tmp_path):
    (tmp_path / "a.md").write_text("# A page\n\n## Its part\n\nSee [b](b.md), [the part](#its-part), "
                                   "[nowhere](#no-part), [c](c.md#x), `[code](missing.md)` and "
                                   "[the web](https://example.com).\n")
    (tmp_path / "b.md").write_text("# B\n")
    assert broken_links(tmp_path / "a.md") == ["a.md: #no-part: no such heading in a.md",
                                               "a.md: c.md#x: no such file"]


def test_slugs_are_githubs():
    assert slug("`llm-platform:cluster`") == "llm-platformcluster"
    assert slug("`runtime: llama-cpp` (the default)") == "runtime-llama-cpp-the-default"
    assert slug("Which server builds, and how they are proven") == "which-server-builds-and-how-they-are-proven"


# --- the generated config reference and schema ----------------------------------------------------


def test_the_config_reference_is_what_the_models_say():
    """docs/configuration.md between its markers is generated from the config models' docstrings
    (`make docs`); a docstring, default or bound changed without it fails here."""
    current = config_reference.DOC.read_text()
    assert config_reference.rendered_doc(current) == current, \
        "docs/configuration.md is stale against components/config/: run `make docs`"


def test_the_editor_schema_is_what_the_models_say():
    assert config_reference.rendered_schema() == config_reference.SCHEMA.read_text(), \
        "schema/stack-config.schema.json is stale against components/config/: run `make docs`"


def test_check_fails_in_one_line_when_a_file_is_stale(tmp_path, monkeypatch, capsys):
    assert config_reference.main(["--check"]) == 0
    stale = tmp_path / "configuration.md"
    stale.write_text(config_reference.DOC.read_text().replace("The minikube profile", "The profile"))
    monkeypatch.setattr(config_reference, "DOC", stale)
    assert config_reference.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stale" in err and "make docs" in err, err


def test_a_field_without_a_docstring_stops_the_reference():
    class Section(_Model):
        documented: int = 1
        """Says what it is."""
        bare: int = 2

    with pytest.raises(config_reference.Undocumented, match=r"Section.bare \(x.bare\) has no docstring"):
        config_reference._rows(Section, "x.")


def test_the_unknown_key_message_points_at_the_reference():
    raw = {k.split(":", 1)[1]: v for k, v in harness.stack_config("local").items()}
    with pytest.raises(ConfigError) as refused:
        parse({**raw, "modelz": []}, "Pulumi.local.yaml")
    assert "docs/configuration.md" in str(refused.value)
    assert config_reference.DOC.is_file()


def schema_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(config_reference.SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def stack_file(stack: str) -> dict:
    return yaml.safe_load((harness.PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text())


@pytest.mark.parametrize("stack", harness.STACKS)
def test_the_stack_files_validate_against_the_editor_schema(stack):
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in schema_validator().iter_errors(stack_file(stack))]
    assert errors == []


def test_the_editor_schema_takes_secrets_and_other_namespaces_and_refuses_a_misspelt_key():
    validator = schema_validator()
    doc = stack_file("eks")
    doc["config"].update({
        f"{PROJECT}:apiKey": {"secure": "v1:AAAA"},
        f"{PROJECT}:hfToken": {"secure": "v1:BBBB"},
        f"{PROJECT}:providerKeys": {"gpt-mini": {"secure": "v1:CCCC"}},
        "aws:region": "us-west-2",
        "kubernetes:enableServerSideApply": True,
    })
    assert list(validator.iter_errors(doc)) == []
    for wrong in ({f"{PROJECT}:modelz": []}, {f"{PROJECT}:modelsNamespace": {"secure": "v1:DDDD"}},
                  {f"{PROJECT}:accelerator": {"kind": "nvidia", "shareCount": 0}}):
        bad = stack_file("eks")
        bad["config"].update(wrong)
        assert list(validator.iter_errors(bad)), wrong
